"""Upgrades: clients reach the chart's Service, which every `helm upgrade` shapes and which
reaches the Ready Ingress pods of any cluster; the strategy and its GPU cost are a
value, rayVersion cannot drift from the image, and the autoscaler runs only when asked."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import ci_params, ci_values, merged_values, named, ray_groups, render, the
from tests.helm.kuberay import (
    cluster_action,
    pod_labels,
    readiness_probe,
    reconcile_serve_service,
    redis_cleanup_pod,
    serve_service,
)

INCREMENTAL = {"autoscaling": {"enabled": True},
               "upgrade": {"strategy": "NewClusterWithIncrementalUpgrade",
                           "incremental": {"gatewayClassName": "istio"}}}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def stable_entry_params() -> list[Any]:
    return [param for param in ci_params() if param.id != "tp4-autoscaling-s3-pvc"]


def client_service(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's <fullname>-serve."""
    name = the(manifests, "RayService")["metadata"]["name"]
    return named(manifests, "Service", f"{name}-serve")


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_client_service_reaches_the_ingress_pods_of_any_cluster(
        values: dict[str, Any], release: str) -> None:
    """<fullname>-serve selects on labels a cluster switch does not change: the chart's pod
    labels, ray.io/serve (common/pod.go: "true" on every RayService worker) and the node
    type. So mid-upgrade it reaches the Ready pods of both clusters, and readiness alone
    (the Ingress's /-/healthz) decides which pods get traffic. KubeRay's own
    <name>-serve-svc, which it keeps for its Ready condition, stays on the active one."""
    manifests = render(values, release)
    rayservice = the(manifests, "RayService")
    selector = client_service(manifests)["spec"]["selector"]
    assert "ray.io/cluster" not in selector
    kuberays = serve_service(rayservice, cluster="active")["spec"]["selector"]
    groups = [g["groupName"] for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for group in groups:
        for cluster in ("active", "pending"):
            assert selects(selector, pod_labels(rayservice, group, cluster))
        assert selects(kuberays, pod_labels(rayservice, group, "active"))
        assert not selects(kuberays, pod_labels(rayservice, group, "pending"))
    # Not the Redis cleanup Job's pod (the head's template, no Ingress, Ready while it runs).
    assert not selects(selector, redis_cleanup_pod(rayservice)["metadata"]["labels"])
    # Nor another release's pods.
    other = the(render(values, "other"), "RayService")
    assert not selects(selector, pod_labels(other, groups[0], "active"))


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_client_service_has_both_serve_ports(values: dict[str, Any], release: str) -> None:
    v = merged_values(values)
    manifests = render(values, release)
    service = client_service(manifests)
    ports = {p["name"]: (p["port"], p["targetPort"], p["appProtocol"])
             for p in service["spec"]["ports"]}
    assert ports == {"serve": (v["ports"]["http"], "serve", "http"),
                     "serve-grpc": (v["ports"]["grpc"], "serve-grpc", "kubernetes.io/h2c")}
    assert service["spec"]["type"] == v["service"]["type"]
    assert service["metadata"].get("annotations", {}) == v["service"]["annotations"]
    # Every pod the Service selects declares both port names (targetPort is by name).
    for name, group in ray_groups(the(manifests, "RayService")).items():
        declared = {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert {"serve", "serve-grpc"} <= declared, name


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_rayservice_leaves_kuberays_serve_service_at_its_defaults(
        values: dict[str, Any], release: str) -> None:
    """No spec.serveService: service.* would reach it only at a cluster switch, and its node
    ports or load balancer would double the chart's. KubeRay still builds <name>-serve-svc
    from the head's serve ports (common/service.go BuildServeService), ClusterIP."""
    rayservice = the(render(values, release), "RayService")
    assert "serveService" not in rayservice["spec"]
    kuberays = serve_service(rayservice, cluster="active")
    assert kuberays["metadata"]["name"] == f"{rayservice['metadata']['name']}-serve-svc"
    assert kuberays["spec"]["type"] == "ClusterIP"
    assert {p["name"] for p in kuberays["spec"]["ports"]} == {"serve", "serve-grpc"}


def test_a_load_balancer_keeps_its_node_ports_and_source_ranges() -> None:
    spec = client_service(render(ci_values("download-only-loadbalancer")))["spec"]
    assert spec["type"] == "LoadBalancer"
    assert {p["name"]: p["nodePort"] for p in spec["ports"]} == {"serve": 30800, "serve-grpc": 30900}
    assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8"]


def test_a_cluster_ip_service_has_no_node_ports() -> None:
    spec = client_service(render())["spec"]
    assert spec["type"] == "ClusterIP"
    assert all("nodePort" not in p for p in spec["ports"])
    assert "loadBalancerSourceRanges" not in spec


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_head_is_never_in_the_service(values: dict[str, Any], release: str) -> None:
    """The head runs no Ingress (num-cpus 0), so nothing serves its ports: it must stay out
    of both Services even if KubeRay's check of its port answered. KubeRay does not need
    it there to call the app healthy: it reads the applications' status from the dashboard
    (rayservice_controller.go getAndCheckServeStatus: GET /api/serve/applications/ through
    utils/dashboardclient/dashboard_httpclient.go, RUNNING or not), never from a proxy, and
    only sets the head's ray.io/serve label from its serve port when
    excludeHeadPodFromServeSvc is false (updateHeadPodServeLabel)."""
    manifests = render(values, release)
    rayservice = the(manifests, "RayService")
    assert rayservice["spec"]["excludeHeadPodFromServeSvc"] is True
    head = pod_labels(rayservice, "head", "active")
    assert not selects(serve_service(rayservice, cluster="active")["spec"]["selector"], head)
    selector = client_service(manifests)["spec"]["selector"]
    assert selector["ray.io/node-type"] == "worker"
    assert not selects(selector, head)


def test_without_exclude_head_the_head_follows_kuberays_serve_label() -> None:
    """service.excludeHead=false: the head is in the chart's Service exactly when KubeRay
    would put it in its own, i.e. while its serve port answers (ray.io/serve, set by
    rayservice_controller.go updateHeadPodServeLabel); its readiness probe checks no
    Ingress, so the label is what keeps a head without one out."""
    manifests = render({"service": {"excludeHead": False}})
    rayservice = the(manifests, "RayService")
    selector = client_service(manifests)["spec"]["selector"]
    assert "ray.io/node-type" not in selector
    assert selects(selector, pod_labels(rayservice, "head", "active", head_proxy_healthy=True))
    assert not selects(selector, pod_labels(rayservice, "head", "active", head_proxy_healthy=False))
    assert not selects(selector, redis_cleanup_pod(rayservice)["metadata"]["labels"])


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_a_worker_is_ready_only_while_its_ingress_can_serve(
        values: dict[str, Any], release: str) -> None:
    """Every worker group (GPU and CPU: either may hold an Ingress replica) gets the chart's
    readiness probe, so KubeRay adds none of its own: the Ingress's /-/healthz on the HTTP
    port, 200 only with a live LLMServer behind it. Readiness alone: the chart sets no
    liveness probe, so KubeRay's raylet check stays the only one (common/pod.go
    initLivenessAndReadinessProbe injects each probe only where the template has none)."""
    v = merged_values(values)
    rayservice = the(render(values, release), "RayService")
    for name, group in ray_groups(rayservice).items():
        container = group["template"]["spec"]["containers"][0]
        assert "livenessProbe" not in container, name
        if name == "head":
            # No Ingress there: KubeRay's own raylet/GCS probe, no Serve check.
            assert "-/healthz" not in str(readiness_probe(rayservice, name))
            continue
        probe = readiness_probe(rayservice, name)
        assert probe["httpGet"] == {"path": "/-/healthz", "port": "serve"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == v["ports"]["http"]
        assert ports["serve-grpc"] == v["ports"]["grpc"]
        # Out of the Service after two misses, not after one slow answer.
        assert probe["periodSeconds"] * probe["failureThreshold"] == 10
        assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_head_ports_are_named_as_kuberay_reads_them() -> None:
    rayservice = the(render(), "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    # gcs-server and dashboard are how the operator finds the GCS and the dashboard; the Ray
    # client port (10001) is left off <name>-head-svc. Nothing listens on serve and
    # serve-grpc there (no Ingress on the head), but KubeRay takes <name>-serve-svc's ports
    # from the head's container (common/service.go BuildServeService).
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "metrics": 8080,
                     "serve": 8000, "serve-grpc": 9000}


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
SECRETS = {"apiKey": {"value": "sk-day-two"}, "redis": {"auth": {"password": "daytwo"}}}


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

def test_kuberay_updates_its_serve_service_only_on_a_switch() -> None:
    """Why the chart owns the client Service (rayservice_controller.go reconcileServices):
    KubeRay creates <name>-serve-svc from spec.serveService, then replaces its spec only
    when the active cluster changes, its annotations never."""
    base = the(render(), "RayService")
    old, new = copy.deepcopy(base), copy.deepcopy(base)
    old["spec"]["serveService"] = {"metadata": {"annotations": {"a": "1"}},
                                   "spec": {"type": "LoadBalancer"}}
    new["spec"]["serveService"] = {"metadata": {"annotations": {"a": "2"}},
                                   "spec": {"type": "LoadBalancer",
                                            "loadBalancerSourceRanges": ["10.0.0.0/8"]}}
    created = reconcile_serve_service(None, old, "c1")
    assert created["metadata"]["annotations"] == {"a": "1"}
    same = reconcile_serve_service(created, new, "c1")
    assert same is created and "loadBalancerSourceRanges" not in same["spec"]
    switched = reconcile_serve_service(created, new, "c2")
    assert switched["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert switched["metadata"]["annotations"] == {"a": "1"}


LB = {"type": "LoadBalancer", "nodePorts": {"grpc": 30900, "http": 30800}}


@pytest.mark.parametrize("strategy", ["NewCluster", "None"])
@pytest.mark.parametrize(("before", "after"), [
    pytest.param({}, {"annotations": {"team": "llm"}}, id="annotations"),
    pytest.param({}, {"type": "NodePort"}, id="type"),
    pytest.param(LB, {**LB, "nodePorts": {"grpc": 31900, "http": 31800}}, id="node-ports"),
    pytest.param(LB, {**LB, "loadBalancerSourceRanges": ["10.0.0.0/8"]}, id="source-ranges"),
    pytest.param({}, {"excludeHead": False}, id="exclude-head"),
])
def test_service_edits_take_effect_through_helm(
        before: dict[str, Any], after: dict[str, Any], strategy: str) -> None:
    """A service.* edit leaves KubeRay nothing to do (the cluster hash is equal, and
    <name>-serve-svc does not depend on it), so it could never wait for a cluster switch:
    it changes <fullname>-serve, which `helm upgrade` applies at once, under any strategy."""
    upgrade = {"upgrade": {"strategy": strategy}}
    old_manifests = render({**SECRETS, **upgrade, "service": before})
    new_manifests = render({**SECRETS, **upgrade, "service": after})
    old, new = (the(m, "RayService") for m in (old_manifests, new_manifests))
    assert cluster_action(old, new) == "nothing"
    assert serve_service(old, "c1") == serve_service(new, "c1")
    assert reconcile_serve_service(serve_service(old, "c1"), new, "c1") == serve_service(old, "c1")
    old_service, new_service = client_service(old_manifests), client_service(new_manifests)
    assert old_service != new_service
    merged = merged_values({"service": after})["service"]
    assert new_service["spec"]["type"] == merged["type"]
    assert new_service["metadata"].get("annotations", {}) == merged["annotations"]
    assert new_service["spec"].get("loadBalancerSourceRanges", []) == merged["loadBalancerSourceRanges"]
    node_ports = {p["name"]: p.get("nodePort") for p in new_service["spec"]["ports"]}
    # Helm drops the null defaults when it merges.
    assert node_ports == {"serve": merged["nodePorts"].get("http"),
                          "serve-grpc": merged["nodePorts"].get("grpc")}
