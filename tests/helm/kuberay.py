"""What the KubeRay v1.7.0 operator does with a RayService, as far as the chart relies on it.

Each function restates one behaviour of ray-operator (file named in its docstring), so the
tests can check the chart against it offline. They model the operator; they are not it, so
README "First install" lists what to confirm on a real cluster.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

Manifest = dict[str, Any]


def serve_service(rayservice: Manifest, cluster: str) -> Manifest:
    """<name>-serve-svc while ``cluster`` is the active RayCluster (common/service.go).

    KubeRay overrides any selector with the active cluster's name and `ray.io/serve=true`,
    and exposes each head port named `serve` or `serve-*`; a port of spec.serveService with
    the same name replaces the generated one (keeping its appProtocol and nodePort). Without
    spec.serveService its type is the head group's serviceType (ClusterIP when unset).
    """
    spec = rayservice["spec"]
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    custom = spec.get("serveService") or {}
    given = {port["name"]: port for port in custom.get("spec", {}).get("ports", [])}
    ports = [given.get(port["name"], {"name": port["name"], "port": port["containerPort"]})
             for port in head.get("ports", [])
             if port["name"] == "serve" or port["name"].startswith("serve-")]
    metadata = custom.get("metadata", {})
    return {"metadata": {"name": metadata.get("name") or f"{rayservice['metadata']['name']}-serve-svc",
                         "annotations": metadata.get("annotations", {})},
            "spec": {"type": spec["rayClusterConfig"]["headGroupSpec"].get("serviceType", "ClusterIP"),
                     **custom.get("spec", {}), "ports": ports,
                     "selector": {"ray.io/cluster": cluster, "ray.io/serve": "true"}}}


def pod_labels(rayservice: Manifest, group: str, cluster: str,
               head_proxy_healthy: bool = True) -> dict[str, str]:
    """Labels of a running pod of ``group`` ("head" or a worker group) (common/pod.go).

    Worker pods always carry ray.io/serve=true and rely on their readiness probe; the head's
    label follows its proxy's health unless excludeHeadPodFromServeSvc
    (rayservice_controller.go updateHeadPodServeLabel).
    """
    cluster_spec = rayservice["spec"]["rayClusterConfig"]
    if group == "head":
        template = cluster_spec["headGroupSpec"]["template"]
        excluded = rayservice["spec"].get("excludeHeadPodFromServeSvc", False)
        serve = head_proxy_healthy and not excluded
        ray = {"ray.io/node-type": "head", "ray.io/group": "headgroup"}
    else:
        (spec,) = [g for g in cluster_spec["workerGroupSpecs"] if g["groupName"] == group]
        template, serve = spec["template"], True
        ray = {"ray.io/node-type": "worker", "ray.io/group": group}
    return {**template["metadata"].get("labels", {}), **ray,
            "ray.io/cluster": cluster, "ray.io/serve": str(serve).lower()}


def running_pod_specs(rayservice: Manifest) -> dict[str, Manifest]:
    """The pod specs KubeRay creates, with the containers it adds.

    - the autoscaler sidecar on the head under enableInTreeAutoscaling, with
      autoscalerOptions.securityContext (common/pod.go BuildAutoscalerContainer);
    - on workers, wait-gcs-ready *appended* after the template's own init containers, with a
      copy of the Ray container's securityContext (common/pod.go DefaultWorkerPodTemplate);
    - under GCS fault tolerance, the Redis cleanup Job's pod (raycluster_controller.go
      buildRedisCleanupJob): the head pod with only its Ray container, its init containers
      kept (all but wait-for-tls-ip-san), the label ray.io/node-type=redis-cleanup, and a
      300 s activeDeadlineSeconds.
    """
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = {}
    head_template = cluster["headGroupSpec"]["template"]
    head = copy.deepcopy(head_template["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions", {})
        head["containers"].append({"name": "autoscaler",
                                   "securityContext": options.get("securityContext", {})})
    pods["head"] = head
    if cluster.get("gcsFaultToleranceOptions"):
        pods["redis-cleanup-job"] = redis_cleanup_pod(rayservice)["spec"]
    for group in cluster["workerGroupSpecs"]:
        spec = copy.deepcopy(group["template"]["spec"])
        ray = spec["containers"][0]
        spec["initContainers"] = [*spec.get("initContainers", []),
                                  {"name": "wait-gcs-ready",
                                   "securityContext": copy.deepcopy(ray.get("securityContext", {}))}]
        pods[group["groupName"]] = spec
    return pods


def readiness_probe(rayservice: Manifest, group: str) -> Manifest:
    """The readiness probe of ``group``'s Ray container once KubeRay built the pod
    (common/pod.go initLivenessAndReadinessProbe, called from BuildPod unless the operator's
    ENABLE_PROBES_INJECTION is false): a probe the template sets is kept as is. Otherwise,
    on a RayService worker, a bash exec of ``wget ... | grep success`` against
    ``localhost:52365/api/local_raylet_healthz`` and ``localhost:<port named serve, else
    8000>/-/healthz``, timeout 2 s, period 5 s, failureThreshold 1
    (utils/constant.go RayServeProxyHealthPath, ServeReadinessProbeFailureThreshold); on the
    head the raylet and GCS health only (from Ray 2.53 one HTTP GET of the agent's
    /api/healthz), as the head's Serve health is its ray.io/serve label instead."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    if group == "head":
        container = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    else:
        (spec,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == group]
        container = spec["template"]["spec"]["containers"][0]
    if "readinessProbe" in container:
        return container["readinessProbe"]
    wget = "wget --tries 1 -T {} -q -O- http://localhost:{}/{} | grep success"
    commands = [wget.format(2, 52365, "api/local_raylet_healthz")]
    if group == "head":
        if _version(cluster["rayVersion"]) >= (2, 53, 0):  # supportsUnifiedHealthCheck
            return {"httpGet": {"path": "/api/healthz", "port": 52365}, "failureThreshold": 10}
        return {"exec": {"command": ["bash", "-c", " && ".join(
            [*commands, wget.format(10, 8265, "api/gcs_healthz")])]}, "failureThreshold": 10}
    serve = next((p["containerPort"] for p in container.get("ports", [])
                  if p["name"] == "serve"), 8000)
    commands.append(wget.format(10, serve, "-/healthz"))
    return {"exec": {"command": ["bash", "-c", " && ".join(commands)]},
            "initialDelaySeconds": 10, "timeoutSeconds": 2, "periodSeconds": 5,
            "successThreshold": 1, "failureThreshold": 1}


REDIS_CLEANUP_DEADLINE_S = 300  # buildRedisCleanupJob: ActiveDeadlineSeconds


def redis_cleanup_pod(rayservice: Manifest) -> Manifest:
    """The Redis cleanup Job's pod template (raycluster_controller.go buildRedisCleanupJob):
    built as the head pod (buildHeadPod, so common/pod.go gives it ray.io/serve=false), then
    relabelled ray.io/node-type=redis-cleanup."""
    template = copy.deepcopy(rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])
    spec = template["spec"]
    spec["containers"] = spec["containers"][:1]
    spec["initContainers"] = [c for c in spec.get("initContainers", [])
                              if c["name"] != "wait-for-tls-ip-san"]
    spec["restartPolicy"] = "Never"
    labels = {**template["metadata"].get("labels", {}), "ray.io/serve": "false",
              "ray.io/node-type": "redis-cleanup"}
    return {"metadata": {**template["metadata"], "labels": labels}, "spec": spec}


# --- what KubeRay does with a changed RayService --------------------------------------------

def cluster_hash(rayservice: Manifest, num_groups: int | None = None) -> str:
    """The hash KubeRay keeps on a RayCluster and compares the RayService's spec against
    (utils/util.go GenerateHashWithoutReplicasAndWorkersToDelete, rayservice_controller.go
    rayClusterSpecForHashing): tolerations and scheduling gates of every template, and each
    worker group's replicas, minReplicas, maxReplicas and workersToDelete, are left out, as
    are upgradeStrategy and suspend. ``num_groups`` hashes only the first worker groups (the
    partial comparison of isClusterSpecHashEqual)."""
    spec = copy.deepcopy(rayservice["spec"]["rayClusterConfig"])
    spec.pop("suspend", None)
    spec.pop("upgradeStrategy", None)
    spec["headGroupSpec"]["template"]["spec"].pop("tolerations", None)
    spec["headGroupSpec"]["template"]["spec"].pop("schedulingGates", None)
    groups = spec.get("workerGroupSpecs", [])
    if num_groups is not None:
        groups = groups[:num_groups]
    for group in groups:
        for field in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(field, None)
        group.get("scaleStrategy", {}).pop("workersToDelete", None)
        group["template"]["spec"].pop("tolerations", None)
        group["template"]["spec"].pop("schedulingGates", None)
    spec["workerGroupSpecs"] = groups
    return json.dumps(spec, sort_keys=True)


def cluster_action(running: Manifest, edited: Manifest) -> str:
    """What KubeRay does to the active RayCluster (built from ``running``) when the RayService
    becomes ``edited`` (rayservice_controller.go shouldUpdateCluster, shouldPrepareNewCluster,
    isClusterSpecHashEqual):

    - "nothing": the hash is equal, so the running cluster keeps its old spec;
    - "update": worker groups were only added at the end, so the cluster is updated in place;
    - "new-cluster": anything else, under NewCluster / NewClusterWithIncrementalUpgrade;
    - "wait": anything else under upgradeStrategy None: not applied until the cluster is
      deleted by hand.

    serveConfigV2 is not part of the cluster: KubeRay submits a changed one to the running
    cluster's Serve in every case (checkIfNeedSubmitServeApplications).
    """
    if cluster_hash(running) == cluster_hash(edited):
        return "nothing"
    num_groups = len(running["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    if (len(edited["spec"]["rayClusterConfig"]["workerGroupSpecs"]) >= num_groups
            and cluster_hash(running) == cluster_hash(edited, num_groups)):
        return "update"
    strategy = edited["spec"].get("upgradeStrategy", {}).get("type", "NewCluster")
    return "wait" if strategy == "None" else "new-cluster"


def reconcile_serve_service(existing: Manifest | None, rayservice: Manifest,
                            cluster: str) -> Manifest:
    """<name>-serve-svc after KubeRay reconciles it (rayservice_controller.go
    reconcileServices): created from spec.serveService (metadata included) when absent;
    afterwards its spec is replaced only when the active cluster changes (the ray.io/cluster
    selector differs) and its metadata is never touched again."""
    built = serve_service(rayservice, cluster)
    if existing is None:
        return built
    if existing["spec"]["selector"]["ray.io/cluster"] == built["spec"]["selector"]["ray.io/cluster"]:
        return existing
    return {"metadata": existing["metadata"], "spec": built["spec"]}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def admission_problems(rayservice: Manifest) -> list[str]:
    """KubeRay's own checks the CRD schema cannot express (utils/validation.go
    ValidateRayServiceMetadata / ValidateRayServiceSpec / ValidateRayClusterSpec); a
    RayService failing one is never reconciled."""
    problems = []
    name = rayservice["metadata"]["name"]
    if len(name) > 47 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"name {name!r}: a DNS-1035 label of at most 47 characters")
    spec = rayservice["spec"]
    cluster = spec["rayClusterConfig"]
    auth = cluster.get("authOptions", {})
    if auth.get("mode") == "token" and _version(cluster.get("rayVersion", "0")) < (2, 52, 0):
        problems.append("authOptions.mode token needs rayVersion >= 2.52.0")
    if cluster.get("gcsFaultToleranceOptions"):
        head = cluster["headGroupSpec"]
        env = {var["name"] for var in head["template"]["spec"]["containers"][0].get("env", [])}
        for owned in ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS"):
            if owned in env:
                problems.append(f"{owned} on the head: KubeRay sets it for GCS fault tolerance")
        if "redis-password" in head.get("rayStartParams", {}):
            problems.append("redis-password in head rayStartParams")
    upgrade = spec.get("upgradeStrategy", {})
    if upgrade.get("type") == "NewClusterWithIncrementalUpgrade":
        options = upgrade.get("clusterUpgradeOptions")
        if not cluster.get("enableInTreeAutoscaling"):
            problems.append("NewClusterWithIncrementalUpgrade needs the Ray autoscaler")
        if not options or not options.get("gatewayClassName"):
            problems.append("NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions")
        elif options["stepSizePercent"] > options.get("maxSurgePercent", 100):
            problems.append("stepSizePercent must be <= maxSurgePercent")
    for group in cluster["workerGroupSpecs"]:
        if not cluster.get("enableInTreeAutoscaling") and (
                "minReplicas" not in group or "maxReplicas" not in group):
            problems.append(f"worker group {group['groupName']}: min/maxReplicas required")
    return problems
