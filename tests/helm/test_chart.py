"""The Helm chart, rendered offline: it lints, its RayService runs the same Serve app as the
CLI on tensorParallelSize-GPU pods, and bad values are refused with a message."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.app import serve_config
from serve.config import ServeConfig
from tests.helm.chart import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    ci_params,
    expected_serve_config,
    merged_values,
    notes,
    offline,
    ray_groups,
    render,
    the,
)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(("values", "release"), ci_params())
def test_lint_reports_nothing_above_info(values: dict[str, Any], release: str, version: str) -> None:
    report = helm.lint(CHART_DIR, offline(values), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{version}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_one_gpu_pod_per_model_copy(values: dict[str, Any], release: str) -> None:
    v = merged_values(values)
    groups = ray_groups(the(render(values, release), "RayService"))
    head = groups.pop("head")
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    gpu = groups.pop(v["worker"]["groupName"])
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == v["tensorParallelSize"]
    scaling = v["autoscaling"]
    # Serve's count (fixed or autoscaled) sets the copies; Ray's autoscaler sizes the group
    # to them between 0 and worker.maxPods, starting from Serve's floor.
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, v["worker"]["maxPods"])
    assert gpu["replicas"] == (scaling["minReplicas"] if scaling["enabled"] else v["replicas"])
    # The only other group is the CPU one, and only when asked for.
    assert list(groups) == ([v["cpuWorker"]["groupName"]] if v["cpuWorker"]["replicas"] else [])
    for cpu in groups.values():
        assert "nvidia.com/gpu" not in str(cpu["template"]["spec"]["containers"][0]["resources"])
        assert cpu["rayStartParams"]["num-gpus"] == "0"


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_serve_config_is_what_the_cli_exports(values: dict[str, Any], release: str) -> None:
    document = yaml.safe_load(the(render(values, release), "RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(document)
    assert document == expected_serve_config(values)
    # And its args are a valid ServeConfig that exports the very same document.
    (app,) = document["applications"]
    assert serve_config(ServeConfig(**app["args"])) == document
    # Serve's proxies are off: the Ingress replicas bind the service's ports on every
    # interface of their pods (a proxy on the same port would collide with them).
    assert document["proxy_location"] == "Disabled"
    assert "http_options" not in document and "grpc_options" not in document
    v = merged_values(values)
    assert (app["args"]["grpc_port"], app["args"]["http_port"], app["args"]["host"]) == (
        v["ports"]["grpc"], v["ports"]["http"], "0.0.0.0")


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"tensorParallelSize": 3}, r"/tensorParallelSize': value must be one of 1, 2, 4, 8",
                 id="tp-3"),
    pytest.param({"tensorParallelSize": 16}, r"/tensorParallelSize': value must be one of 1, 2, 4, 8",
                 id="tp-16"),
    pytest.param({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                 r"autoscaling.minReplicas \(5\) must be <= autoscaling.maxReplicas \(2\)",
                 id="min-over-max"),
    pytest.param({"autoscaling": {"enabled": True, "minReplicas": 0}},
                 r"autoscaling.minReplicas 0 needs cpuWorker.replicas >= 1", id="zero-without-cpu"),
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
    pytest.param({"fullnameOverride": "7b-serve"}, r"must start with a letter", id="dns-1035"),
    pytest.param({"gcsFaultTolerance": {"enabled": False, "externalRedis": {"address": "r:6379"}}},
                 r"gcsFaultTolerance.enabled is false", id="gcs-address-while-off"),
])
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- NOTES.txt: how to reach the service ----------------------------------------------------

def test_notes_show_the_charts_service_in_cluster() -> None:
    text = notes()
    assert "LLMClient(\"llm-mistral-serve-serve.inference.svc:9000\"" in text
    assert "port-forward svc/llm-mistral-serve-serve 9000:9000" in text
    assert "serve-svc" not in text


def test_notes_for_a_load_balancer_read_its_address() -> None:
    text = notes({"service": {"type": "LoadBalancer"}})
    assert "get svc llm-mistral-serve-serve -o jsonpath='{.status.loadBalancer.ingress[0].ip}" in text
    assert "port-forward svc/" not in text.split("Ray dashboard")[0]


def test_notes_for_a_node_port_read_the_grpc_node_port() -> None:
    text = notes({"service": {"type": "NodePort"}})
    assert "get svc llm-mistral-serve-serve -o jsonpath='{.spec.ports[?(@.name==\"serve-grpc\")].nodePort}" in text
    assert "port-forward svc/" not in text.split("Ray dashboard")[0]


def test_notes_give_grpc_an_address_under_incremental_upgrades() -> None:
    # KubeRay makes no <name>-serve-svc then; the chart's Service is there in every mode.
    text = notes({"autoscaling": {"enabled": True},
                  "upgrade": {"strategy": "NewClusterWithIncrementalUpgrade",
                              "incremental": {"gatewayClassName": "istio"}}})
    assert "get gateway llm-mistral-serve-gateway" in text
    assert "LLMClient(\"llm-mistral-serve-serve.inference.svc:9000\"" in text
