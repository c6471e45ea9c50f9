"""Getting the weights onto the pods: an init image that has what the URL's scheme needs, an
init container and a disk the scheduler knows the size of."""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helm.chart import ci_values, merged_values, ray_groups, render, the
from tests.helm.kuberay import redis_cleanup_pod

S3 = {"model": {"pvc": {"enabled": False},
                "download": {"enabled": True, "url": "s3://weights/mistral/"}}}


def groups_of(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return ray_groups(the(render(values), "RayService"))


def fetch_container(group: dict[str, Any]) -> dict[str, Any]:
    (fetch,) = [c for c in group["template"]["spec"].get("initContainers", [])
                if c["name"] == "fetch-model"]
    return fetch


@pytest.mark.parametrize(("values", "image"), [
    pytest.param(S3, "amazon/aws-cli:2.22.0", id="s3-aws-cli"),
    pytest.param(ci_values("download-only-loadbalancer"), "python:3.12-slim", id="https-python"),
])
def test_the_fetch_image_follows_the_url_scheme(values: dict[str, Any], image: str) -> None:
    for group in groups_of(values).values():
        assert fetch_container(group)["image"] == image


def test_the_fetch_container_is_sized_and_can_write_home() -> None:
    fetch = fetch_container(groups_of(S3)["gpu"])
    assert fetch["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
        "limits": {"memory": "2Gi"}}
    # It runs as the pod's non-root user, whom the aws-cli image has no home for.
    assert {"name": "HOME", "value": "/tmp"} in fetch["env"]


def test_download_only_requests_its_emptydir_as_ephemeral_storage() -> None:
    values = ci_values("download-only-loadbalancer")
    for name, group in groups_of(values).items():
        # The head holds the checkpoint's JSON files only.
        size = "1Gi" if name == "head" else "32Gi"
        spec = group["template"]["spec"]
        assert spec["volumes"] == [{"name": "model", "emptyDir": {"sizeLimit": size}}]
        requests = spec["containers"][0]["resources"]["requests"]
        assert requests["ephemeral-storage"] == size


def test_an_ephemeral_storage_request_of_the_group_wins() -> None:
    values = ci_values("download-only-loadbalancer")
    values["worker"] = {"resources": {"requests": {"cpu": "8", "memory": "64Gi",
                                                   "ephemeral-storage": "48Gi"}}}
    groups = groups_of(values)
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "ephemeral-storage"] == "48Gi"
    assert groups["head"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "ephemeral-storage"] == "1Gi"


@pytest.mark.parametrize("name", ["defaults", "tp4-autoscaling-s3-pvc", "tp8-hostpath"])
def test_shared_weights_request_no_ephemeral_storage(name: str) -> None:
    for group in groups_of(ci_values(name)).values():
        assert "ephemeral-storage" not in group["template"]["spec"]["containers"][0][
            "resources"].get("requests", {})


def test_a_claim_filled_from_s3_is_shared_and_fetched_once() -> None:
    values = ci_values("tp4-autoscaling-s3-pvc")
    v = merged_values(values)
    for group in groups_of(values).values():
        spec = group["template"]["spec"]
        assert spec["volumes"] == [{"name": "model", "persistentVolumeClaim": {
            "claimName": "llm-mistral-serve-model"}}]
        fetch = fetch_container(group)
        assert fetch["envFrom"] == [{"secretRef": {"name": "aws-model-reader"}}]
        assert fetch["volumeMounts"] == [{"name": "model", "mountPath": v["model"]["path"],
                                          "readOnly": False}]
        assert spec["containers"][0]["volumeMounts"][0]["readOnly"] is True


# --- the fetch script itself, run with sh against a local archive ---------------------------

def env_value(fetch: dict[str, Any], name: str) -> str | None:
    (var,) = [e for e in fetch["env"] if e["name"] == name]
    return var.get("value")


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTP server holding model.tar: config.json first, then a weights file."""
    root = tmp_path_factory.mktemp("www")
    with tarfile.open(root / "model.tar", "w") as archive:
        for name, data in (("config.json", b'{"model_type": "mistral"}'),
                           ("model-00001-of-00001.safetensors", b"w" * 4096),
                           ("tokenizer.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.tar"
    server.shutdown()
    thread.join()


def run_fetch(group: dict[str, Any], url: str, dest: Path, node_type: str) -> str:
    fetch = fetch_container(group)
    dest.mkdir(exist_ok=True)  # the volume's mount point, as in the pod
    env = {"PATH": os.environ["PATH"], "MODEL_URL": url, "MODEL_DIR": str(dest),
           "LOCK_TIMEOUT_MINUTES": "120", "RAY_NODE_TYPE": node_type,
           "CONFIG_ONLY": env_value(fetch, "CONFIG_ONLY") or "false"}
    result = subprocess.run([*fetch["command"], *fetch["args"]], env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout


def test_the_head_fetches_only_the_json_files(archive_server: str, tmp_path: Path) -> None:
    # A recreated head must be back within KubeRay's 600 s worker reconnect limit; the
    # weights would take longer than that on a slow link, and the head runs no model.
    groups = groups_of(ci_values("download-only-loadbalancer"))
    assert env_value(fetch_container(groups["head"]), "CONFIG_ONLY") == "true"
    run_fetch(groups["head"], archive_server, tmp_path / "head", "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        ".mistral-serve-complete", "config.json"]
    run_fetch(groups["gpu"], archive_server, tmp_path / "gpu", "worker")
    assert sorted(p.name for p in (tmp_path / "gpu").iterdir()) == [
        ".mistral-serve-complete", "config.json", "model-00001-of-00001.safetensors",
        "tokenizer.json"]


@pytest.mark.parametrize("name", ["download-only-loadbalancer", "tp4-autoscaling-s3-pvc"])
def test_the_redis_cleanup_job_skips_the_download(name: str, tmp_path: Path) -> None:
    # KubeRay builds the cleanup Job from the head's template, init containers included,
    # and gives it 300 s (raycluster_controller.go buildRedisCleanupJob).
    rayservice = the(render(ci_values(name)), "RayService")
    job = redis_cleanup_pod(rayservice)
    (fetch,) = job["spec"]["initContainers"]
    assert fetch["name"] == "fetch-model"
    assert [e for e in fetch["env"] if e["name"] == "RAY_NODE_TYPE"] == [{
        "name": "RAY_NODE_TYPE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/node-type']"}}}]
    assert job["metadata"]["labels"]["ray.io/node-type"] == "redis-cleanup"
    # An unreachable URL: the script must not even try it.
    out = run_fetch({"template": job}, "https://unreachable.invalid/m.tar", tmp_path, "redis-cleanup")
    assert out.strip() == "Redis cleanup Job: no model needed"
    assert list(tmp_path.iterdir()) == []
