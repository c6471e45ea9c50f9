"""What the KubeRay v1.7.0 operator does with a RayService, as far as the chart relies on it.

Each function restates one behaviour of ray-operator (file named in its docstring), so the
tests can check the chart against it offline. They model the operator; they are not it, so
README "First install" lists what to confirm on a real cluster.
"""

from __future__ import annotations

import copy
import re
from typing import Any

Manifest = dict[str, Any]


def serve_service(rayservice: Manifest, cluster: str) -> Manifest:
    """<name>-serve-svc while ``cluster`` is the active RayCluster (common/service.go).

    KubeRay overrides any selector with the active cluster's name and `ray.io/serve=true`,
    and exposes each head port named `serve` or `serve-*`; a port of spec.serveService with
    the same name replaces the generated one (keeping its appProtocol and nodePort).
    """
    spec = rayservice["spec"]
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    custom = spec.get("serveService") or {}
    given = {port["name"]: port for port in custom.get("spec", {}).get("ports", [])}
    ports = [given.get(port["name"], {"name": port["name"], "port": port["containerPort"]})
             for port in head.get("ports", [])
             if port["name"] == "serve" or port["name"].startswith("serve-")]
    return {"metadata": {"name": custom.get("metadata", {}).get("name")
                         or f"{rayservice['metadata']['name']}-serve-svc"},
            "spec": {**custom.get("spec", {}), "ports": ports,
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
    """The pod specs KubeRay creates, with the containers it adds (common/pod.go): the
    autoscaler sidecar on the head (autoscalerOptions.securityContext), the wait-gcs-ready
    init container on workers (a copy of the Ray container's securityContext), and the
    Redis cleanup Job it builds from the head's template under GCS fault tolerance."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = {}
    head = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions", {})
        head["containers"].append({"name": "autoscaler",
                                   "securityContext": options.get("securityContext", {})})
    pods["head"] = head
    if cluster.get("gcsFaultToleranceOptions"):
        job = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
        pods["redis-cleanup-job"] = job
    for group in cluster["workerGroupSpecs"]:
        spec = copy.deepcopy(group["template"]["spec"])
        ray = spec["containers"][0]
        spec["initContainers"] = [{"name": "wait-gcs-ready",
                                   "securityContext": copy.deepcopy(ray.get("securityContext", {}))},
                                  *spec.get("initContainers", [])]
        pods[group["groupName"]] = spec
    return pods


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
