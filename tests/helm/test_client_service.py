"""The client Service: `<fullname>-serve`, which every `helm upgrade` shapes, reaches the Ready
Ingress pods of any cluster of the release; KubeRay's own serve Service stays at its defaults,
and a service.* edit takes effect through Helm whatever KubeRay does on a cluster switch."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.helm.chart import ci_params, ci_values, merged_values, named, ray_groups, render, the
from tests.helm.kuberay import (
    cluster_action,
    pod_labels,
    readiness_probe,
    reconcile_serve_service,
    redis_cleanup_pod,
    serve_service,
)

# Offline renders need given secrets (tests/helm/test_secrets.py).
SECRETS = {"apiKey": {"value": "sk-day-two"}, "redis": {"auth": {"password": "daytwo"}}}


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
