"""Getting the weights onto the pods: an init image that has what the URL's scheme needs, an
init container and a disk the scheduler knows the size of."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import ci_values, merged_values, ray_groups, render, the

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
    for group in groups_of(values).values():
        spec = group["template"]["spec"]
        assert spec["volumes"] == [{"name": "model", "emptyDir": {"sizeLimit": "32Gi"}}]
        requests = spec["containers"][0]["resources"]["requests"]
        assert requests["ephemeral-storage"] == "32Gi"


def test_an_ephemeral_storage_request_of_the_group_wins() -> None:
    values = ci_values("download-only-loadbalancer")
    values["worker"] = {"resources": {"requests": {"cpu": "8", "memory": "64Gi",
                                                   "ephemeral-storage": "48Gi"}}}
    groups = groups_of(values)
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "ephemeral-storage"] == "48Gi"
    assert groups["head"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "ephemeral-storage"] == "32Gi"


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
