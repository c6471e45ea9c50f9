"""Who may talk to the Ray cluster: Ray token auth, a dashboard off 0.0.0.0, NetworkPolicies
that open only the Serve ports, and labels that keep the pods inside their selectors."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helm.chart import (
    ci_params,
    ci_values,
    env_of,
    merged_values,
    named,
    of_kind,
    ray_groups,
    render,
    the,
)
from tests.helm.kuberay import pod_labels, redis_cleanup_pod
from tests.helm.networkpolicy import Pod, admits

RAY_PODS = {"app.kubernetes.io/name": "mistral-serve", "app.kubernetes.io/instance": "llm",
            "app.kubernetes.io/component": "ray"}


def head_of(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return ray_groups(the(render(values), "RayService"))["head"]


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_ray_token_auth_is_on(values: dict[str, Any], release: str) -> None:
    cluster = the(render(values, release), "RayService")["spec"]["rayClusterConfig"]
    secret = merged_values(values)["rayAuth"]["existingSecret"]
    assert cluster["authOptions"] == {"mode": "token", **({"secretName": secret} if secret else {})}


def test_the_dashboard_listens_on_the_pod_ip() -> None:
    head = head_of()
    assert head["rayStartParams"]["dashboard-host"] == "$POD_IP"
    # KubeRay runs `ray start` in a shell, which expands it from this variable.
    assert env_of(head["template"]["spec"]["containers"][0])["POD_IP"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}}


def test_the_dashboard_listens_everywhere_only_when_asked() -> None:
    assert head_of({"head": {"dashboardHost": "0.0.0.0"}})["rayStartParams"]["dashboard-host"] == (
        "0.0.0.0")


def test_only_the_head_gets_the_pod_ip() -> None:
    groups = ray_groups(the(render(ci_values("tp2-autoscaling-0-6-existing-secrets")), "RayService"))
    for name, group in groups.items():
        assert ("POD_IP" in env_of(group["template"]["spec"]["containers"][0])) is (name == "head")


def test_ray_pods_admit_outsiders_only_on_serve_ports() -> None:
    policy = named(render(), "NetworkPolicy", "llm-mistral-serve-ray")
    assert policy["spec"]["podSelector"] == {"matchLabels": RAY_PODS}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers, operator, clients = policy["spec"]["ingress"]
    # Ray's own traffic, any port, only between this release's Ray pods.
    assert peers == {"from": [{"podSelector": {"matchLabels": RAY_PODS}}]}
    # The operator: the dashboard (serveConfigV2 goes there) and the head's proxy health.
    assert operator["from"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    assert [p["port"] for p in operator["ports"]] == [8265, 8000]
    # Anyone else: the Serve ports alone; 6379, 8265, 10001 and 8080 stay closed.
    assert clients == {"ports": [{"port": 8000, "protocol": "TCP"},
                                 {"port": 9000, "protocol": "TCP"}]}


def test_clients_and_scrapers_can_be_narrowed() -> None:
    values = ci_values("tp4-autoscaling-s3-pvc")
    values["networkPolicy"]["clientFrom"] = [{"podSelector": {"matchLabels": {"role": "api"}}}]
    rules = named(render(values), "NetworkPolicy", "llm-mistral-serve-ray")["spec"]["ingress"]
    assert rules[2]["from"] == [{"podSelector": {"matchLabels": {"role": "api"}}}]
    assert rules[3] == {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}


def test_in_chart_redis_admits_only_ray_pods() -> None:
    policy = named(render(), "NetworkPolicy", "llm-mistral-serve-redis")
    selector = policy["spec"]["podSelector"]
    assert selector["matchExpressions"] == [{"key": "app.kubernetes.io/component",
                                             "operator": "In", "values": ["redis", "gcs-redis"]}]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": RAY_PODS}}],
                                          "ports": [{"port": 6379, "protocol": "TCP"}]}]


def test_no_redis_policy_without_in_chart_redis() -> None:
    names = [m["metadata"]["name"] for m in render(ci_values("tp2-3replicas-external-redis"))
             if m["kind"] == "NetworkPolicy"]
    assert names == ["llm-mistral-serve-ray"]


@pytest.mark.parametrize("key", ["app.kubernetes.io/instance", "app.kubernetes.io/component",
                                 "ray.io/serve"])
def test_pod_labels_cannot_take_over_selector_labels(key: str) -> None:
    with pytest.raises(helm.HelmError, match=f"podLabels must not set {key}"):
        render({"podLabels": {key: "other"}})


def test_pod_labels_are_added_under_the_chart_labels() -> None:
    for group in ray_groups(the(render(ci_values("tp4-autoscaling-s3-pvc")), "RayService")).values():
        assert group["template"]["metadata"]["labels"] == {**RAY_PODS, "team": "inference"}


def test_scheduling_values_reach_the_pods() -> None:
    groups = ray_groups(the(render(ci_values("tp4-autoscaling-s3-pvc")), "RayService"))
    head, gpu = groups["head"]["template"]["spec"], groups["gpu"]["template"]["spec"]
    assert head["serviceAccountName"] == gpu["serviceAccountName"] == "mistral-serve"
    assert head["priorityClassName"] == gpu["priorityClassName"] == "inference-critical"
    assert gpu["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in head


# --- the NetworkPolicies, evaluated: who reaches what ---------------------------------------

def ray_pod(rayservice: dict[str, Any], group: str) -> Pod:
    return Pod(pod_labels(rayservice, group, "active"), namespace_labels={NS_LABEL: "inference"})


NS_LABEL = "kubernetes.io/metadata.name"


def test_network_policies_admit_exactly_the_intended_connections() -> None:
    manifests = render(ci_values("tp2-3replicas-external-redis") | {"redis": {"enabled": True},
                                                                       "externalRedis": {"url": ""}})
    policies = of_kind(manifests, "NetworkPolicy")
    rayservice = the(manifests, "RayService")
    head, gpu = ray_pod(rayservice, "head"), ray_pod(rayservice, "gpu")
    cleanup = Pod({**redis_cleanup_pod(rayservice)["metadata"]["labels"]})
    redis = Pod(named(manifests, "StatefulSet", "llm-mistral-serve-redis")[
        "spec"]["template"]["metadata"]["labels"])
    operator = Pod({"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system",
                   {NS_LABEL: "kuberay-system"})
    stray_operator = Pod({"app.kubernetes.io/name": "kuberay-operator"}, "apps", {NS_LABEL: "apps"})
    client = Pod({"app": "web"}, "apps", {NS_LABEL: "apps"})
    outsider = Pod({"app": "web"}, "other", {NS_LABEL: "other"})
    cases = [
        (gpu, head, 6379, True), (head, gpu, 12345, True),        # Ray's own traffic
        (operator, head, 8265, True), (operator, head, 8000, True),
        (operator, head, 6379, False), (stray_operator, head, 8265, False),
        (client, gpu, 9000, True), (client, gpu, 8000, True),     # the Serve ports
        (client, head, 8265, False), (client, head, 6379, False), (client, head, 10001, False),
        (client, gpu, 8080, False), (outsider, gpu, 9000, False),  # clientFrom: apps only
        (head, redis, 6379, True), (cleanup, redis, 6379, True),   # KubeRay's cleanup Job too
        (client, redis, 6379, False), (operator, redis, 6379, False),
    ]
    assert [admits(policies, src, dst, port) for src, dst, port, _ in cases] == [
        allowed for *_, allowed in cases]
