"""Render the Helm chart offline (helm-python-sdk: Helm's Go SDK, no helm binary, no cluster)
and describe what it should produce, for tests/helm/test_chart.py."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from serve.app import serve_config
from serve.config import AutoscalingBounds, Limits, ServeConfig

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "mistral-serve"
CI_VALUES = CHART_DIR / "ci" / "tp2-3replicas-external-redis-values.yaml"
# KubeRay v1.7.0's RayService CRD, kept in the repository (helm/kuberay/, with its licence).
CRD_PATH = REPO / "helm" / "kuberay" / "ray.io_rayservices.yaml"
RELEASE, NAMESPACE = "llm", "inference"

Manifest = dict[str, Any]


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def ci_values() -> dict[str, Any]:
    return yaml.safe_load(CI_VALUES.read_text())


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every object the chart renders for ``values`` (over the chart's defaults)."""
    rendered = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def the(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = of_kind(manifests, kind)
    return found


def merged_values(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values an install would use: Helm's own coalescing of defaults and overrides."""
    return chart().merge_values(values or {})


def expected_serve_config(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``serve.app.serve_config`` exports for the ServeConfig these chart values mean.

    Written out field by field on purpose: it is the contract between values.yaml and
    ServeConfig. The API key and a Redis URL with a password are absent: the chart passes
    them as env vars, never in serveConfigV2.
    """
    v = merged_values(values)
    scaling = v["autoscaling"]
    external_url = v["externalRedis"]["url"] if not v["redis"]["enabled"] else ""
    config = ServeConfig(
        model=v["model"]["path"],
        tensor_parallel_size=v["tensorParallelSize"],
        replicas=v["replicas"],
        ingress_replicas=v["ingressReplicas"],
        accelerator="gpu",
        autoscaling=AutoscalingBounds(
            min_replicas=scaling["minReplicas"], max_replicas=scaling["maxReplicas"],
            target_ongoing_requests=scaling["targetOngoingRequests"],
            target_waiting_requests=scaling["targetWaitingRequests"],
            target_kv_cache_usage=scaling["targetKvCacheUsage"],
        ) if scaling["enabled"] else None,
        redis_url=external_url or None,
        grpc_port=v["ports"]["grpc"],
        http_port=v["ports"]["http"],
        app_name=v["appName"],
        limits=Limits(max_prompt_tokens=v["limits"].get("maxPromptTokens"),
                      max_new_tokens=v["limits"]["maxNewTokens"],
                      max_message_bytes=v["limits"]["maxMessageBytes"]),
        session_ttl_s=v["sessionTtlSeconds"],
        index_resync_s=v["indexResyncSeconds"],
        prefix_routing=v["prefixRouting"],
        max_ongoing_requests=v["maxOngoingRequests"],
        engine=v["engine"],
    )
    return serve_config(config)


@cache
def rayservice_schema() -> dict[str, Any]:
    """The v1 RayService openAPIV3Schema, made strict (see ``_no_unknown_fields``)."""
    crd = yaml.load(CRD_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return _no_unknown_fields(v1["schema"]["openAPIV3Schema"])


def _no_unknown_fields(node: Any) -> Any:
    """The API server silently prunes fields a structural schema does not declare, so a typo
    in the chart would vanish instead of failing; refusing them here catches it."""
    if isinstance(node, list):
        return [_no_unknown_fields(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _no_unknown_fields(value) for key, value in node.items()}
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict
