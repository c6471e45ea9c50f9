"""Every object the chart renders is one the API server and the KubeRay operator accept:
Kubernetes' own schemas (kubernetes-validate --strict), KubeRay's RayService CRD, the checks
KubeRay makes beyond its CRD, and name lengths once KubeRay derives its own names."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART_DIR,
    CRD_PATH,
    KUBE_VERSIONS,
    OLDEST_KUBE_VERSION,
    ci_params,
    of_kind,
    ray_groups,
    rayservice_schema,
    render,
    the,
)
from tests.helm.kuberay import admission_problems

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def kube_validate(manifest: dict[str, Any], version: str) -> None:
    """kubernetes-validate --strict: unknown fields are errors, as with kubectl --validate."""
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_versions_tested_are_the_chart_declared_range() -> None:
    declared = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
    assert declared == f">={OLDEST_KUBE_VERSION}-0"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(("values", "release"), ci_params())
def test_every_builtin_object_passes_kubernetes_validate_strict(
        values: dict[str, Any], release: str, version: str) -> None:
    manifests = [m for m in render(values, release) if m["kind"] != "RayService"]
    assert manifests, "the chart renders more than the RayService"
    for manifest in manifests:
        kube_validate(manifest, version)


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_rayservice_validates_against_kuberay_crd(values: dict[str, Any], release: str) -> None:
    assert CRD_PATH.exists(), f"the KubeRay RayService CRD belongs at {CRD_PATH}"
    rayservice = the(render(values, release), "RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(rayservice_schema()).validate(rayservice)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(("values", "release"), ci_params())
def test_ray_pod_templates_pass_kubernetes_validate_strict(
        values: dict[str, Any], release: str, version: str) -> None:
    # The CRD embeds KubeRay's copy of the pod schema; Kubernetes' own is stricter.
    for name, group in ray_groups(the(render(values, release), "RayService")).items():
        kube_validate({"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": name}, "template": group["template"]}, version)


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"extraEnv": [{"name": "REDIS_PASSWORD", "value": "x"}]},
                 r"extraEnv must not set REDIS_PASSWORD: KubeRay sets it", id="env-redis-password"),
    pytest.param({"extraEnv": [{"name": "MISTRAL_SERVE_API_KEY", "value": "x"}]},
                 r"extraEnv must not set MISTRAL_SERVE_API_KEY: set apiKey.\* instead", id="env-api-key"),
    pytest.param({"head": {"rayStartParams": {"redis-password": "x"}}},
                 r"head.rayStartParams must not set redis-password", id="param-redis-password"),
    pytest.param({"head": {"rayStartParams": {"dashboard-port": 9265}}},
                 r"head.rayStartParams must not set dashboard-port: set ports.dashboard instead",
                 id="param-dashboard-port"),
    pytest.param({"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}},
                 r"loadBalancerSourceRanges applies only to service.type LoadBalancer", id="lb-ranges"),
    pytest.param({"service": {"nodePorts": {"grpc": 30900}}},
                 r"service.nodePorts applies only to service.type NodePort or LoadBalancer",
                 id="node-port-on-cluster-ip"),
    pytest.param({"service": {"type": "NodePort", "nodePorts": {"grpc": 30900, "http": 30900}}},
                 r"nodePorts.grpc and service.nodePorts.http are both 30900", id="same-node-ports"),
    pytest.param({"ports": {"grpc": 8000}}, r"ports.http 8000 is already ports.grpc", id="grpc-is-http"),
    pytest.param({"ports": {"dashboard": 8080}}, r"ports.dashboard 8080 is already Ray's metrics port",
                 id="dashboard-on-metrics"),
    pytest.param({"ports": {"grpc": 6379}}, r"ports.grpc 6379 is already the GCS port", id="grpc-on-gcs"),
])
def test_values_kuberay_or_the_api_server_would_reject_are_refused(
        values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_the_refused_head_env_is_refused_by_kuberay_too() -> None:
    # The chart's rule mirrors KubeRay's (utils/validation.go): the model flags it as well.
    rayservice = the(render(), "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParams"]["redis-password"] = "x"
    assert admission_problems(rayservice) == ["redis-password in head rayStartParams"]


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_rayservice_passes_kuberay_checks_beyond_the_crd(
        values: dict[str, Any], release: str) -> None:
    assert admission_problems(the(render(values, release), "RayService")) == []


def test_kuberay_checks_catch_a_head_redis_password() -> None:
    # The rule the chart's env naming avoids: KubeRay owns REDIS_PASSWORD on a GCS FT head.
    rayservice = the(render(), "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["env"].append({"name": "REDIS_PASSWORD", "value": "x"})
    assert admission_problems(rayservice) == [
        "REDIS_PASSWORD on the head: KubeRay sets it for GCS fault tolerance"]


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_every_name_is_a_dns_label_after_kuberay_derives_its_own(
        values: dict[str, Any], release: str) -> None:
    manifests = render(values, release)
    names = [m["metadata"]["name"] for m in manifests]
    service = the(manifests, "RayService")["metadata"]["name"]
    # KubeRay's: <name>-serve-svc, <name>-head-svc, the RayCluster <name>-xxxxx.
    names += [f"{service}-serve-svc", f"{service}-head-svc", f"{service}-abcde"]
    for name in names:
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
    for statefulset in of_kind(manifests, "StatefulSet"):
        # Its pods' controller-revision-hash label is <name>-<10 characters>, at most 63.
        assert len(statefulset["metadata"]["name"]) <= 52
