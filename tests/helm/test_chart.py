"""The Helm chart, rendered offline: it lints, its RayService fits KubeRay's CRD and runs the
same Serve app as the CLI, bad values are refused with a message, secrets stay in Secrets."""

from __future__ import annotations

import base64
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.app import serve_config
from serve.config import ServeConfig
from tests.helm.chart import (
    CHART_DIR,
    CRD_PATH,
    NAMESPACE,
    ci_values,
    expected_serve_config,
    merged_values,
    of_kind,
    rayservice_schema,
    render,
    the,
)

API_KEY = "sk-unit-test-4e1f0b9c"

# Each a way people install it; every test over CASES runs on all of them.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tp2-3replicas-external-redis": ci_values(),
    "autoscaling-s3-download": {
        "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 6},
        "model": {"pvc": {"enabled": False},
                  "download": {"enabled": True, "url": "s3://weights/mistral-7b/",
                               "secretName": "aws-reader",
                               "image": {"repository": "amazon/aws-cli", "tag": "2.22.0"}}},
        "apiKey": {"value": API_KEY},
        "limits": {"maxPromptTokens": 16384},
        "imagePullSecrets": [{"name": "regcred"}],
        "podLabels": {"team": "inference"},
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "extraEnv": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "head": {"rayStartParams": {"num-cpus": 0}, "nodeSelector": {"pool": "cpu"}},
    },
    "tp4-hostpath-redis-url-secret": {
        "tensorParallelSize": 4,
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "redis-url"},
        "model": {"pvc": {"enabled": False}, "hostPath": "/mnt/models", "subPath": "mistral"},
        "service": {"type": "LoadBalancer", "nodePorts": {"grpc": 30900}},
    },
}


def case_params() -> list[Any]:
    return [pytest.param(values, id=name) for name, values in CASES.items()]


def ray_containers(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]]
    return [pod["spec"]["containers"][0] for pod in pods]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


# --- a. renders and lints -----------------------------------------------------------------

@pytest.mark.parametrize("values", case_params())
def test_lint_reports_nothing_above_info(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", case_params())
def test_renders_one_rayservice_of_tp_gpu_pods(values: dict[str, Any]) -> None:
    v = merged_values(values)
    cluster = the(render(values), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == v["tensorParallelSize"]
    scaling = v["autoscaling"]
    bounds = ((scaling["minReplicas"], scaling["maxReplicas"]) if scaling["enabled"]
              else (v["replicas"], v["replicas"]))
    assert (group["minReplicas"], group["maxReplicas"]) == bounds
    assert group["replicas"] == bounds[0]


@pytest.mark.parametrize("values", case_params())
def test_grpc_reaches_every_healthy_proxy(values: dict[str, Any]) -> None:
    manifests = render(values)
    head = ray_containers(the(manifests, "RayService"))[0]
    # KubeRay's serve-svc takes the port named `serve`; head-svc every named head port.
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports.items() >= {"serve": 8000, "grpc": 9000, "dashboard": 8265}.items()
    (api,) = [s for s in of_kind(manifests, "Service")
              if s["spec"]["selector"].get("ray.io/serve") == "true"]
    assert {p["name"]: p["port"] for p in api["spec"]["ports"]} == {"grpc": 9000, "http": 8000}
    assert api["spec"]["type"] == merged_values(values)["service"]["type"]


# --- b. the RayService fits the CRD and runs the CLI's app --------------------------------

@pytest.mark.parametrize("values", case_params())
def test_rayservice_validates_against_kuberay_crd(values: dict[str, Any]) -> None:
    assert CRD_PATH.exists(), f"the KubeRay RayService CRD belongs at {CRD_PATH}"
    rayservice = the(render(values), "RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(rayservice_schema()).validate(rayservice)


@pytest.mark.parametrize("values", case_params())
def test_serve_config_is_what_the_cli_exports(values: dict[str, Any]) -> None:
    document = yaml.safe_load(the(render(values), "RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(document)
    assert document == expected_serve_config(values)
    # And its args are a valid ServeConfig that exports the very same document.
    (app,) = document["applications"]
    config = ServeConfig(**app["args"], grpc_port=document["grpc_options"]["port"],
                         http_port=document["http_options"]["port"])
    assert serve_config(config) == document


# --- c. bad values are refused with a message naming the problem --------------------------

@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"tensorParallelSize": 3}, r"/tensorParallelSize': value must be one of 1, 2, 4, 8",
                 id="tp-3"),
    pytest.param({"tensorParallelSize": 16}, r"/tensorParallelSize': value must be one of 1, 2, 4, 8",
                 id="tp-16"),
    pytest.param({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                 r"autoscaling.minReplicas \(5\) must be <= autoscaling.maxReplicas \(2\)",
                 id="min-over-max"),
    pytest.param({"model": {"pvc": {"enabled": False}}}, r"model: no model source", id="no-model"),
    pytest.param({"model": {"hostPath": "/mnt/models"}}, r"set exactly one model source",
                 id="two-model-sources"),
    pytest.param({"model": {"download": {"enabled": True}}}, r"model.download.url is required",
                 id="download-without-url"),
    pytest.param({"externalRedis": {"url": "redis://cache:6379/0"}},
                 r"redis.enabled \(in-chart Redis\) and externalRedis are both set", id="two-redis"),
    pytest.param({"redis": {"enabled": False}, "externalRedis": {"url": "redis://:pw@cache:6379/0"}},
                 r"externalRedis.url must not carry a password", id="password-in-url"),
    pytest.param({"tensorParalelSize": 2}, r"additional properties 'tensorParalelSize' not allowed",
                 id="typo"),
])
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- d. Redis and secrets -----------------------------------------------------------------

def redis_objects(manifests: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests
                  if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "redis")


def test_in_chart_redis_is_a_statefulset_with_a_password_secret() -> None:
    manifests = render()
    assert redis_objects(manifests) == [
        "Secret/llm-mistral-serve-redis", "Service/llm-mistral-serve-redis",
        "Service/llm-mistral-serve-redis-headless", "StatefulSet/llm-mistral-serve-redis"]
    for container in ray_containers(the(manifests, "RayService")):
        env = list(env_of(container))
        # $(REDIS_PASSWORD) expands only from a variable defined before it.
        assert env.index("REDIS_PASSWORD") < env.index("MISTRAL_SERVE_REDIS_URL")
        assert env_of(container)["MISTRAL_SERVE_REDIS_URL"]["value"] == (
            f"redis://:$(REDIS_PASSWORD)@llm-mistral-serve-redis.{NAMESPACE}.svc:6379/0")
        password_ref = env_of(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password_ref == {"name": "llm-mistral-serve-redis", "key": "redis-password"}


def test_persistent_redis_claims_a_volume() -> None:
    statefulset = the(render({"redis": {"persistence": {"enabled": True, "size": "2Gi"}}}),
                      "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "--appendonly yes" in statefulset["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_external_redis_renders_no_redis() -> None:
    manifests = render(ci_values())
    assert redis_objects(manifests) == []
    assert of_kind(manifests, "StatefulSet") == []
    for container in ray_containers(the(manifests, "RayService")):
        assert "REDIS_PASSWORD" not in env_of(container)


def test_redis_url_with_password_comes_from_its_secret() -> None:
    manifests = render(CASES["tp4-hostpath-redis-url-secret"])
    for container in ray_containers(the(manifests, "RayService")):
        ref = env_of(container)["MISTRAL_SERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "redis-url", "key": "redis-url"}


def test_api_key_is_never_in_the_rayservice() -> None:
    manifests = render({"apiKey": {"value": API_KEY}})
    rayservice = the(manifests, "RayService")
    text = yaml.safe_dump(rayservice)
    assert API_KEY not in text
    assert base64.b64encode(API_KEY.encode()).decode() not in text
    (secret,) = [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-api-key")]
    assert base64.b64decode(secret["data"]["api-key"]).decode() == API_KEY
    for container in ray_containers(rayservice):
        ref = env_of(container)["MISTRAL_SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "api-key"}
    # The generated Redis password stays out of it too.
    (redis_secret,) = [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-redis")]
    assert base64.b64decode(redis_secret["data"]["redis-password"]).decode() not in text


def test_api_key_can_be_turned_off() -> None:
    manifests = render({"apiKey": {"enabled": False}})
    assert [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-api-key")] == []
    for container in ray_containers(the(manifests, "RayService")):
        assert "MISTRAL_SERVE_API_KEY" not in env_of(container)
