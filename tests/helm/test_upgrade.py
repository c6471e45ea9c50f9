"""Upgrades: the strategy and its GPU cost are a value, rayVersion cannot drift from the
image, scaling edits reach the running cluster through Serve and Ray's autoscaler, and the
fields KubeRay ignores still change the cluster. The client Service: test_client_service.py."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import ci_params, ci_values, merged_values, ray_groups, render, the
from tests.helm.kuberay import cluster_action
from tests.helm.test_client_service import SECRETS, client_service

INCREMENTAL = {"autoscaling": {"enabled": True},
               "upgrade": {"strategy": "NewClusterWithIncrementalUpgrade",
                           "incremental": {"gatewayClassName": "istio"}}}


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_strategy_and_deletion_delay_are_values(values: dict[str, Any], release: str) -> None:
    v = merged_values(values)
    spec = the(render(values, release), "RayService")["spec"]
    assert spec["upgradeStrategy"]["type"] == v["upgrade"]["strategy"]
    assert spec["rayClusterDeletionDelaySeconds"] == v["upgrade"]["clusterDeletionDelaySeconds"]


def test_incremental_upgrades_surge_by_a_fraction_through_a_gateway() -> None:
    spec = the(render(ci_values("tp4-autoscaling-s3-pvc")), "RayService")["spec"]
    assert spec["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "istio", "maxSurgePercent": 25,
                                  "stepSizePercent": 25, "intervalSeconds": 120}}
    # KubeRay routes HTTP through <name>-gateway; the chart's Service is there all the same
    # and gives gRPC a stable address.
    assert client_service(render(ci_values("tp4-autoscaling-s3-pvc")))


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({**INCREMENTAL, "autoscaling": {"enabled": False}},
                 "NewClusterWithIncrementalUpgrade needs autoscaling.enabled=true", id="no-autoscaling"),
    pytest.param({**INCREMENTAL, "upgrade": {"strategy": "NewClusterWithIncrementalUpgrade"}},
                 "needs upgrade.incremental.gatewayClassName", id="no-gateway"),
    pytest.param({**INCREMENTAL, "upgrade": {**INCREMENTAL["upgrade"], "incremental": {
        "gatewayClassName": "istio", "stepSizePercent": 50, "maxSurgePercent": 25}}},
                 r"stepSizePercent \(50\) must be <= upgrade.incremental.maxSurgePercent \(25\)",
                 id="step-over-surge"),
])
def test_incomplete_incremental_upgrades_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- rayVersion and the image ---------------------------------------------------------------

def test_the_default_tag_carries_ray_version() -> None:
    cluster = the(render({"rayVersion": "2.61.1"}), "RayService")["spec"]["rayClusterConfig"]
    image = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert (cluster["rayVersion"], image) == ("2.61.1", "mistral-serve:0.1.0-ray2.61.1")


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"image": {"tag": "0.1.0-ray2.59.0"}},
                 r"image.tag 0.1.0-ray2.59.0 carries Ray 2.59.0 but rayVersion is 2.60.0",
                 id="mismatch"),
    pytest.param({"image": {"tag": "0.1.0"}}, r"image.tag 0.1.0 does not say its Ray version",
                 id="unsaid"),
    pytest.param({"rayVersion": "2.52.0", "image": {"tag": "0.1.0-ray2.52.0"}},
                 r"rayVersion 2.52.0 is too old: the chart needs Ray >= 2.53.0", id="too-old"),
])
def test_a_ray_version_other_than_the_images_is_refused(
        values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_an_untagged_image_is_accepted_when_vouched_for() -> None:
    rayservice = the(render({"image": {"tag": "sha-4e1f0b9", "requireRayVersionInTag": False}}),
                     "RayService")
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"


# --- the autoscaler -------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "release"), ci_params())
def test_rays_autoscaler_always_sizes_the_gpu_group(values: dict[str, Any], release: str) -> None:
    cluster = the(render(values, release), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert "idleTimeoutSeconds" in cluster["autoscalerOptions"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    # Only the autoscaler sidecar talks to the Kubernetes API.
    assert head["automountServiceAccountToken"] is True
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


# --- day two: what each edit does to a running release --------------------------------------

def serve_args(rayservice: dict[str, Any]) -> dict[str, Any]:
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    return app["args"]


# Supplied secrets: two renders differ only by the edit (generated ones differ every time).
def rendered_pair(before: dict[str, Any], after: dict[str, Any]) -> tuple[Any, Any]:
    return (the(render({**SECRETS, **before}), "RayService"),
            the(render({**SECRETS, **after}), "RayService"))


def edit(before: dict[str, Any], after: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """KubeRay's action on the cluster, and the Serve args before and after."""
    old, new = rendered_pair(before, after)
    return cluster_action(old, new), serve_args(old), serve_args(new)


@pytest.mark.parametrize(("before", "after", "changed"), [
    pytest.param({"replicas": 2}, {"replicas": 3}, {"replicas": 3}, id="scale-up"),
    pytest.param({"replicas": 3}, {"replicas": 2}, {"replicas": 2}, id="scale-down"),
    pytest.param({"autoscaling": {"enabled": True, "maxReplicas": 4}},
                 {"autoscaling": {"enabled": True, "maxReplicas": 8}},
                 {"autoscaling": {"max_replicas": 8}}, id="raise-max"),
    pytest.param({"autoscaling": {"enabled": True, "minReplicas": 1}},
                 {"autoscaling": {"enabled": True, "minReplicas": 3}},
                 {"autoscaling": {"min_replicas": 3}}, id="raise-min"),
    pytest.param({"replicas": 2}, {"replicas": 2, "autoscaling": {"enabled": True}},
                 {"autoscaling": {"min_replicas": 1}}, id="turn-autoscaling-on"),
])
def test_scaling_edits_reach_the_running_cluster_through_serve(
        before: dict[str, Any], after: dict[str, Any], changed: dict[str, Any]) -> None:
    # KubeRay leaves the RayCluster alone (its hash ignores replicas and bounds), but the edit
    # is in serveConfigV2, which it submits to the running cluster's Serve; Ray's autoscaler
    # then adds or removes GPU pods for the copies Serve wants, under worker.maxPods.
    action, old, new = edit(before, after)
    assert action == "nothing"
    assert old != new
    for key, value in changed.items():
        if isinstance(value, dict):
            assert {k: new[key][k] for k in value} == value
        else:
            assert new[key] == value


@pytest.mark.parametrize(("before", "after", "strategy_action"), [
    pytest.param({}, {"worker": {"maxPods": 16}}, "new-cluster", id="raise-max-pods"),
    pytest.param({}, {"worker": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}},
                 "new-cluster", id="gpu-tolerations"),
    pytest.param({}, {"head": {"tolerations": [{"key": "cpu", "operator": "Exists"}]}},
                 "new-cluster", id="head-tolerations"),
    pytest.param({"cpuWorker": {"replicas": 1}}, {"cpuWorker": {"replicas": 2}},
                 "new-cluster", id="cpu-pods"),
    pytest.param({}, {"cpuWorker": {"replicas": 1}}, "update", id="add-cpu-group"),
    pytest.param({}, {"upgrade": {"strategy": "None"}, "worker": {"maxPods": 16}}, "wait",
                 id="none-waits"),
])
def test_fields_kuberay_ignores_still_change_the_cluster(
        before: dict[str, Any], after: dict[str, Any], strategy_action: str) -> None:
    # Each of these alone would leave KubeRay's hash equal and the edit unapplied; the chart
    # stamps them into the pod templates, so they are applied like any other cluster change.
    old, new = rendered_pair(before, after)
    bare = [copy.deepcopy(r) for r in (old, new)]
    for rayservice in bare:
        for group in ray_groups(rayservice).values():
            annotations = group["template"]["metadata"]["annotations"]
            for key in [k for k in annotations if k.startswith("mistral-serve.io/")
                        or k == "checksum/tolerations"]:
                del annotations[key]
    if strategy_action != "update":
        assert cluster_action(*bare) == "nothing", "KubeRay alone would drop this edit"
    assert cluster_action(old, new) == strategy_action


def test_a_copy_count_above_the_pod_ceiling_is_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"replicas \(9\) is above worker.maxPods \(8\)"):
        render({"replicas": 9})
    with pytest.raises(helm.HelmError, match=r"autoscaling.maxReplicas \(12\) is above worker.maxPods"):
        render({"autoscaling": {"enabled": True, "maxReplicas": 12}})


# --- the client Service on day two ----------------------------------------------------------
