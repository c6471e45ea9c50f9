"""Every object the chart renders is one the API server and the KubeRay operator accept:
Kubernetes' own schemas (kubernetes-validate --strict), KubeRay's RayService CRD, the checks
KubeRay makes beyond its CRD, and name lengths once KubeRay derives its own names."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.helm.chart import (
    CRD_PATH,
    KUBE_VERSION,
    ci_params,
    of_kind,
    ray_groups,
    rayservice_schema,
    render,
    the,
)
from tests.helm.kuberay import admission_problems

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def kube_validate(manifest: dict[str, Any]) -> None:
    """kubernetes-validate --strict: unknown fields are errors, as with kubectl --validate."""
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_every_builtin_object_passes_kubernetes_validate_strict(
        values: dict[str, Any], release: str) -> None:
    manifests = [m for m in render(values, release) if m["kind"] != "RayService"]
    assert manifests, "the chart renders more than the RayService"
    for manifest in manifests:
        kube_validate(manifest)


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_rayservice_validates_against_kuberay_crd(values: dict[str, Any], release: str) -> None:
    assert CRD_PATH.exists(), f"the KubeRay RayService CRD belongs at {CRD_PATH}"
    rayservice = the(render(values, release), "RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(rayservice_schema()).validate(rayservice)


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_ray_pod_templates_pass_kubernetes_validate_strict(
        values: dict[str, Any], release: str) -> None:
    # The CRD embeds KubeRay's copy of the pod schema; Kubernetes' own is stricter and newer.
    for name, group in ray_groups(the(render(values, release), "RayService")).items():
        kube_validate({"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": name}, "template": group["template"]})


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
