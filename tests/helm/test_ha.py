"""No single point of failure: the head's GCS state survives it in a Redis of its own, the
head runs no Serve replica, and node drains take GPU pods one at a time."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helm.chart import (
    ci_params,
    ci_values,
    env_of,
    named,
    of_kind,
    ray_groups,
    render,
    the,
)
from tests.helm.kuberay import pod_labels


def redis_server_args(statefulset: dict[str, Any]) -> str:
    return statefulset["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_gcs_state_goes_to_a_separate_noeviction_redis() -> None:
    manifests = render()
    options = the(manifests, "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options == {
        "redisAddress": "llm-mistral-serve-gcs-redis.inference.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "llm-mistral-serve-redis",
                                                         "key": "redis-password"}}}}
    gcs = named(manifests, "StatefulSet", "llm-mistral-serve-gcs-redis")
    assert "--maxmemory-policy noeviction" in redis_server_args(gcs)
    assert "--appendonly yes" in redis_server_args(gcs)
    assert gcs["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    # The index next to it is a cache and may evict; it must not be the GCS store.
    index = named(manifests, "StatefulSet", "llm-mistral-serve-redis")
    assert "--maxmemory-policy allkeys-lru" in redis_server_args(index)
    assert named(manifests, "Service", "llm-mistral-serve-gcs-redis")["spec"]["selector"] == {
        "app.kubernetes.io/name": "mistral-serve", "app.kubernetes.io/instance": "llm",
        "app.kubernetes.io/component": "gcs-redis"}


def test_gcs_state_can_go_to_an_external_redis() -> None:
    manifests = render(ci_values("tp2-3replicas-external-redis"))
    options = the(manifests, "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options == {
        "redisAddress": "redis-gcs.cache.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-gcs-auth",
                                                         "key": "password"}}}}
    assert of_kind(manifests, "StatefulSet") == []


def test_without_gcs_fault_tolerance_there_is_no_gcs_redis() -> None:
    manifests = render({"gcsFaultTolerance": {"enabled": False}})
    assert "gcsFaultToleranceOptions" not in the(manifests, "RayService")["spec"]["rayClusterConfig"]
    assert [s["metadata"]["name"] for s in of_kind(manifests, "StatefulSet")] == [
        "llm-mistral-serve-redis"]


def test_gcs_redis_alone_still_gets_a_password() -> None:
    # Index in an external Redis, GCS in the chart's: the password Secret is still made.
    manifests = render({"redis": {"enabled": False}})
    assert sorted(s["metadata"]["name"] for s in of_kind(manifests, "Secret")) == [
        "llm-mistral-serve-api-key", "llm-mistral-serve-redis"]
    for container in ray_groups(the(manifests, "RayService")).values():
        assert "MISTRAL_SERVE_REDIS_URL" not in env_of(container["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(("values", "release"), ci_params())
def test_the_head_takes_no_serve_replicas(values: dict[str, Any], release: str) -> None:
    head = ray_groups(the(render(values, release), "RayService"))["head"]
    # Ingress and LLMServer replicas need CPUs; the head offers Ray none.
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"


def test_scale_to_zero_keeps_the_ingress_on_a_cpu_pod() -> None:
    groups = ray_groups(the(render(ci_values("tp2-autoscaling-0-6-existing-secrets")), "RayService"))
    assert (groups["gpu"]["replicas"], groups["gpu"]["minReplicas"]) == (0, 0)
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (2, 2)


# --- PodDisruptionBudgets -------------------------------------------------------------------

def budgets(manifests: list[dict[str, Any]]) -> dict[str, int]:
    found = [pdb for pdb in of_kind(manifests, "PodDisruptionBudget")
             if not pdb["metadata"]["name"].endswith("redis")]
    for pdb in found:
        # The only form the eviction API honours for pods a RayCluster owns.
        assert set(pdb["spec"]) == {"minAvailable", "selector"}
        assert isinstance(pdb["spec"]["minAvailable"], int)
    return {pdb["metadata"]["name"].removeprefix("llm-mistral-serve-"): pdb["spec"]["minAvailable"]
            for pdb in found}


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("defaults", {}, id="one-copy-gcs-ft"),
    pytest.param("tp2-3replicas-external-redis", {"workers-gpu": 2}, id="three-copies"),
    pytest.param("download-only-loadbalancer", {"workers-gpu": 1}, id="two-copies"),
    pytest.param("tp4-autoscaling-s3-pvc", {}, id="autoscaling-from-one"),
    pytest.param("tp2-autoscaling-0-6-existing-secrets", {"workers-cpu": 1}, id="two-cpu-pods"),
])
def test_drains_take_one_pod_at_a_time(name: str, expected: dict[str, int]) -> None:
    assert budgets(render(ci_values(name))) == expected


def test_without_gcs_fault_tolerance_drains_wait_for_the_head() -> None:
    assert budgets(render({"gcsFaultTolerance": {"enabled": False}})) == {"head": 1}


def test_budgets_can_be_set_or_turned_off() -> None:
    assert budgets(render({"replicas": 4, "podDisruptionBudget": {"gpuMinAvailable": 3,
                                                                  "headMinAvailable": 1}})) == {
        "head": 1, "workers-gpu": 3}
    assert budgets(render({"replicas": 4, "podDisruptionBudget": {"enabled": False}})) == {}


def test_budgets_select_the_pods_kuberay_makes() -> None:
    values = {"replicas": 3, "cpuWorker": {"replicas": 2}, "podDisruptionBudget": {"headMinAvailable": 1}}
    manifests = render(values)
    rayservice = the(manifests, "RayService")
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        if pdb["metadata"]["name"].endswith("redis"):
            continue
        group = pdb["metadata"]["name"].removeprefix("llm-mistral-serve-").removeprefix("workers-")
        selector = pdb["spec"]["selector"]["matchLabels"]
        for candidate in ("head", "gpu", "cpu"):
            # Both clusters of an upgrade count: each pod of the group, in either.
            for cluster in ("active", "pending"):
                labels = pod_labels(rayservice, candidate, cluster)
                assert (selector.items() <= labels.items()) is (candidate == group), (pdb, candidate)


def test_each_in_chart_redis_has_a_budget_of_one() -> None:
    manifests = render()
    for component in ("redis", "gcs-redis"):
        pdb = named(manifests, "PodDisruptionBudget", f"llm-mistral-serve-{component}")
        assert pdb["spec"]["minAvailable"] == 1
        (statefulset,) = [s for s in of_kind(manifests, "StatefulSet")
                          if s["metadata"]["name"] == f"llm-mistral-serve-{component}"]
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Only the Redis the chart runs: none with both external.
    assert [p for p in of_kind(render(ci_values("tp2-3replicas-external-redis")),
                               "PodDisruptionBudget") if "redis" in p["metadata"]["name"]] == []


def test_the_head_alone_is_marked_not_to_evict() -> None:
    for name, group in ray_groups(the(render({"cpuWorker": {"replicas": 1}}), "RayService")).items():
        annotations = group["template"]["metadata"]["annotations"]
        marked = {key: annotations.get(key) for key in (
            "cluster-autoscaler.kubernetes.io/safe-to-evict", "karpenter.sh/do-not-disrupt")}
        assert marked == ({"cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                           "karpenter.sh/do-not-disrupt": "true"} if name == "head"
                          else dict.fromkeys(marked)), name


def test_the_gcs_redis_has_room_to_rewrite_its_aof() -> None:
    gcs = named(render(), "StatefulSet", "llm-mistral-serve-gcs-redis")
    container = gcs["spec"]["template"]["spec"]["containers"][0]
    # 512mb of data may exist twice during a rewrite, plus the server's own overhead.
    assert "--maxmemory 512mb" in container["args"][0]
    assert container["resources"]["limits"]["memory"] == "1280Mi"
    # AOF alone: no RDB snapshot forks on top of the rewrites.
    assert "--appendonly yes --appendfsync everysec --save ''" in container["args"][0]


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"gcsFaultTolerance": {"redis": {"resources": {"limits": {"memory": "768Mi"}}}}},
                 r"gcsFaultTolerance.redis.resources.limits.memory 768Mi leaves no room for an AOF "
                 r"rewrite with maxMemory 512mb: set it to at least 1280Mi", id="gcs"),
    pytest.param({"redis": {"persistence": {"enabled": True}}},
                 r"redis.resources.limits.memory 1536Mi .* at least 2304Mi", id="index-with-aof"),
])
def test_a_redis_without_room_for_a_rewrite_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)
