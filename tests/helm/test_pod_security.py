"""Every pod the chart makes (and every container KubeRay adds to them) passes Pod Security
`restricted`; the hostPath mode is the one exception, for its hostPath volume alone."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import ci_params, ci_values, release_of, render, the
from tests.helm.kuberay import running_pod_specs
from tests.helm.pod_security import violations

WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet", "Job")


def pod_specs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec a release leads to, named kind/name (ray/<group> for Ray pods)."""
    pods = {}
    for manifest in manifests:
        if manifest["kind"] == "RayService":
            pods.update({f"ray/{group}": spec
                         for group, spec in running_pod_specs(manifest).items()})
        elif manifest["kind"] in WORKLOADS:
            pods[f"{manifest['kind']}/{manifest['metadata']['name']}"] = (
                manifest["spec"]["template"]["spec"])
    return pods


@pytest.mark.parametrize(("values", "release"), [
    param for param in ci_params() if param.id != "tp8-hostpath"])
def test_every_pod_passes_restricted(values: dict[str, Any], release: str) -> None:
    pods = pod_specs(render(values, release))
    assert "ray/head" in pods
    assert {name: violations(pod, "restricted") for name, pod in pods.items()} == {
        name: [] for name in pods}


def test_hostpath_mode_fails_only_for_its_hostpath_volume() -> None:
    pods = pod_specs(render(ci_values("tp8-hostpath"), release_of("tp8-hostpath")))
    ray = {name: pod for name, pod in pods.items() if name.startswith("ray/")}
    assert ray and len(ray) < len(pods)
    for name, pod in ray.items():
        # Baseline already forbids hostPath volumes, so this mode needs level `privileged`.
        assert violations(pod, "baseline") == ["hostPathVolumes: model"], name
        assert violations(pod, "restricted") == [
            "hostPathVolumes: model", "restrictedVolumes: model (hostPath)"], name
    for name in pods.keys() - ray.keys():
        assert violations(pods[name], "restricted") == [], name


def test_kuberay_sidecars_are_checked_too() -> None:
    pods = pod_specs(render({"autoscaling": {"enabled": True}}))
    assert [c["name"] for c in pods["ray/head"]["containers"]] == ["ray-head", "autoscaler"]
    assert [c["name"] for c in pods["ray/gpu"]["initContainers"]] == ["wait-gcs-ready"]
    assert violations(pods["ray/head"], "restricted") == []
    assert violations(pods["ray/gpu"], "restricted") == []


def test_the_download_container_is_checked_too() -> None:
    values = ci_values("download-only-loadbalancer")
    pods = pod_specs(render(values))
    # KubeRay appends wait-gcs-ready after the template's own (common/pod.go
    # DefaultWorkerPodTemplate), and keeps the head's in the Redis cleanup Job.
    assert [c["name"] for c in pods["ray/gpu"]["initContainers"]] == [
        "fetch-model", "wait-gcs-ready"]
    assert [c["name"] for c in pods["ray/redis-cleanup-job"]["initContainers"]] == ["fetch-model"]
    assert violations(pods["ray/redis-cleanup-job"], "restricted") == []
    assert violations(pods["ray/gpu"], "restricted") == []


def test_emptied_security_values_fail_restricted() -> None:
    # The check is not vacuous: without the chart's securityContext values the Ray pods fail
    # (null deletes a default in Helm; {} would merge into it).
    rayservice = the(render({"podSecurityContext": None, "securityContext": None}), "RayService")
    found = violations(running_pod_specs(rayservice)["head"], "restricted")
    assert [v for v in found if "ray-head" in v] == [
        "allowPrivilegeEscalation: ray-head", "runAsNonRoot: ray-head",
        "seccompProfile_restricted: ray-head", "capabilities_restricted: ray-head does not drop ALL"]


def test_baseline_catches_host_access() -> None:
    pod = {"hostNetwork": True,
           "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                           "securityContext": {"privileged": True,
                                               "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    assert violations(pod, "baseline") == [
        "hostNamespaces: hostNetwork", "privileged: c",
        "capabilities_baseline: c adds ['SYS_ADMIN']", "hostPorts: c"]
