"""Render the Helm chart offline (helm-python-sdk: Helm's Go SDK, no helm binary, no cluster)
and describe what it should produce, for the tests in tests/helm."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from serve.app import serve_config
from serve.config import AutoscalingBounds, Limits, ServeConfig

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "mistral-serve"
CI_DIR = CHART_DIR / "ci"
# KubeRay v1.7.0's RayService CRD, kept in the repository (helm/kuberay/, with its licence).
CRD_PATH = REPO / "helm" / "kuberay" / "ray.io_rayservices.yaml"
RELEASE, NAMESPACE = "llm", "inference"
# The newest Kubernetes that kubernetes-validate ships schemas for, and the oldest the chart
# supports (Chart.yaml kubeVersion >=1.25): the tests validate against both.
KUBE_VERSION = "1.37.0"
OLDEST_KUBE_VERSION = "1.25.0"
KUBE_VERSIONS = (OLDEST_KUBE_VERSION, KUBE_VERSION)
# 45 characters (Helm allows 53): every name KubeRay and the chart derive must still fit.
LONG_RELEASE = "mistral-serve-production-inference-eu-west-1"

Manifest = dict[str, Any]


# --- the value sets under helm/mistral-serve/ci/ --------------------------------------------

def ci_values(name: str) -> dict[str, Any]:
    """helm/mistral-serve/ci/<name>-values.yaml."""
    return yaml.safe_load((CI_DIR / f"{name}-values.yaml").read_text()) or {}


CI_NAMES = sorted(path.name.removesuffix("-values.yaml") for path in CI_DIR.glob("*-values.yaml"))
# The release each set is installed as; the hostPath set also checks long names.
CI_RELEASES = {"tp8-hostpath": LONG_RELEASE}


def release_of(name: str) -> str:
    return CI_RELEASES.get(name, RELEASE)


def ci_params() -> list[Any]:
    """One pytest param per CI value set: (values, release)."""
    return [pytest.param(ci_values(name), release_of(name), id=name) for name in CI_NAMES]


# --- rendering ------------------------------------------------------------------------------

@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


# The tests render offline, as `helm template` does, where the chart refuses to generate
# secrets unless told the render is a throwaway; test_secrets.py renders without this.
OFFLINE = {"generateSecretsOffline": True}


def offline(values: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` for an offline render that may generate throwaway secrets."""
    return {**OFFLINE, **(values or {})}


def render_files(values: dict[str, Any] | None = None, release: str = RELEASE,
                 *, strict_offline: bool = False) -> dict[str, str]:
    """Every rendered file, NOTES.txt included, freshly (generated secrets differ each time).
    ``strict_offline``: render ``values`` as given, without OFFLINE."""
    given = (values or {}) if strict_offline else offline(values)
    return chart().render(given, name=release, namespace=NAMESPACE)


@cache
def _render_cached(values_json: str, release: str) -> tuple[Manifest, ...]:
    rendered = render_files(json.loads(values_json), release)
    return tuple(doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
                 for doc in yaml.safe_load_all(text) if doc)


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[Manifest]:
    """Every object the chart renders for ``values`` (over the chart's defaults).

    Rendered once per value set and release in a session: a second call returns the same
    objects, generated secrets included. Use ``render_files`` for a fresh render.
    """
    key = json.dumps(values or {}, sort_keys=True)
    return copy.deepcopy(list(_render_cached(key, release)))


def notes(values: dict[str, Any] | None = None, release: str = RELEASE) -> str:
    (text,) = [text for path, text in render_files(values, release).items()
               if path.endswith("NOTES.txt")]
    return text


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def the(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = of_kind(manifests, kind)
    return found


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found


def merged_values(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values an install would use: Helm's own coalescing of defaults and overrides."""
    return chart().merge_values(values or {})


# --- the Ray pods inside the RayService -----------------------------------------------------

def ray_groups(rayservice: Manifest) -> dict[str, Manifest]:
    """Group name -> group spec; the head is "head"."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"],
            **{group["groupName"]: group for group in cluster["workerGroupSpecs"]}}


def ray_containers(rayservice: Manifest) -> list[Manifest]:
    return [group["template"]["spec"]["containers"][0]
            for group in ray_groups(rayservice).values()]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {var["name"]: var for var in container.get("env", [])}


# --- what the chart should produce ----------------------------------------------------------

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
        # One front door per pod that takes traffic: the CPU pods if any, else the GPU pods
        # Serve always keeps.
        ingress_replicas=v["cpuWorker"]["replicas"] or (
            scaling["minReplicas"] if scaling["enabled"] else v["replicas"]),
        ingress_replicas_per_node=1,
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
        host="0.0.0.0",
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
