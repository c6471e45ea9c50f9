"""Secrets stay in Secrets, stay put across upgrades, restart what uses them when they change,
and never show on a command line."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import (
    CHART_DIR,
    NAMESPACE,
    OFFLINE,
    ci_values,
    env_of,
    named,
    of_kind,
    ray_containers,
    ray_groups,
    render,
    render_files,
    the,
)

API_KEY = "sk-unit-test-4e1f0b9c"
GITOPS = "tp2-autoscaling-0-6-existing-secrets"


def checksums(template: dict[str, Any]) -> dict[str, str]:
    return {key: value for key, value in template["metadata"].get("annotations", {}).items()
            if key.startswith("checksum/")}


def pod_templates(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    templates = {f"ray/{name}": group["template"]
                 for name, group in ray_groups(the(manifests, "RayService")).items()}
    templates.update({f"redis/{s['metadata']['name']}": s["spec"]["template"]
                      for s in of_kind(manifests, "StatefulSet")})
    return templates


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- where the secrets go -------------------------------------------------------------------

def test_the_index_redis_url_takes_its_password_from_the_secret() -> None:
    for container in ray_containers(the(render(), "RayService")):
        env = list(env_of(container))
        # $(INDEX_REDIS_PASSWORD) expands only from a variable defined before it.
        assert env.index("INDEX_REDIS_PASSWORD") < env.index("MISTRAL_SERVE_REDIS_URL")
        assert env_of(container)["MISTRAL_SERVE_REDIS_URL"]["value"] == (
            f"redis://:$(INDEX_REDIS_PASSWORD)@llm-mistral-serve-redis.{NAMESPACE}.svc:6379/0")
        assert env_of(container)["INDEX_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "llm-mistral-serve-redis", "key": "redis-password"}


def test_a_redis_url_with_a_password_comes_from_its_secret() -> None:
    for container in ray_containers(the(render(ci_values("tp8-hostpath")), "RayService")):
        ref = env_of(container)["MISTRAL_SERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "index-redis-url", "key": "redis-url"}


def test_the_api_key_is_never_in_the_rayservice() -> None:
    manifests = render({"apiKey": {"value": API_KEY}})
    rayservice = the(manifests, "RayService")
    text = yaml.safe_dump(rayservice)
    assert API_KEY not in text
    assert base64.b64encode(API_KEY.encode()).decode() not in text
    secret = named(manifests, "Secret", "llm-mistral-serve-api-key")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == API_KEY
    for container in ray_containers(rayservice):
        ref = env_of(container)["MISTRAL_SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "llm-mistral-serve-api-key", "key": "api-key"}
    redis_secret = named(manifests, "Secret", "llm-mistral-serve-redis")
    assert base64.b64decode(redis_secret["data"]["redis-password"]).decode() not in text


def test_the_api_key_can_be_turned_off() -> None:
    manifests = render({"apiKey": {"enabled": False}})
    assert [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-api-key")] == []
    for container in ray_containers(the(manifests, "RayService")):
        assert "MISTRAL_SERVE_API_KEY" not in env_of(container)


# --- Redis keeps its password off the command line and is really checked --------------------

@pytest.mark.parametrize("name", ["llm-mistral-serve-redis", "llm-mistral-serve-gcs-redis"])
def test_redis_password_is_in_a_file_not_on_a_command_line(name: str) -> None:
    manifests = render()
    (container,) = named(manifests, "StatefulSet", name)["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    password = base64.b64decode(named(manifests, "Secret", "llm-mistral-serve-redis")[
        "data"]["redis-password"]).decode()
    assert password not in yaml.safe_dump(container)
    assert "requirepass" not in script.split("exec redis-server", 1)[1]
    assert "printf 'requirepass %s\\n' \"$REDISCLI_AUTH\" > /run/redis/redis.conf" in script
    assert "unset REDISCLI_AUTH && exec redis-server /run/redis/redis.conf" in script
    assert list(env_of(container)) == ["REDISCLI_AUTH"]


def test_redis_liveness_asks_redis_itself() -> None:
    (container,) = named(render(), "StatefulSet", "llm-mistral-serve-redis")[
        "spec"]["template"]["spec"]["containers"]
    liveness = container["livenessProbe"]
    assert "tcpSocket" not in liveness
    assert liveness["exec"]["command"][-1] == "redis-cli ping 2>&1 | grep -Eq '^(PONG|LOADING)'"


def test_persistent_redis_claims_a_volume() -> None:
    statefulset = named(render({"redis": {"persistence": {"enabled": True, "size": "2Gi"},
                                          "resources": {"limits": {"memory": "2304Mi"}}}}),
                        "StatefulSet", "llm-mistral-serve-redis")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "--appendonly yes" in statefulset["spec"]["template"]["spec"]["containers"][0]["args"][0]


# --- stable across renders, and a changed secret rolls its pods -----------------------------

def test_checksums_match_the_generated_secrets() -> None:
    manifests = render()
    api_key = named(manifests, "Secret", "llm-mistral-serve-api-key")["data"]["api-key"]
    password = named(manifests, "Secret", "llm-mistral-serve-redis")["data"]["redis-password"]
    for name, template in pod_templates(manifests).items():
        expected = {"checksum/redis-password": sha256(password)}
        if name.startswith("ray/"):
            expected["checksum/api-key"] = sha256(api_key)
        if name == "ray/gpu":  # the GPU toleration (tests/helm/test_upgrade.py)
            expected["checksum/tolerations"] = template["metadata"]["annotations"][
                "checksum/tolerations"]
        assert checksums(template) == expected, name


def test_a_given_api_key_gives_the_same_checksum_on_every_render() -> None:
    def checksum(key: str) -> str:
        (text,) = [t for p, t in render_files({"apiKey": {"value": key}}).items()
                   if p.endswith("rayservice.yaml")]
        return checksums(ray_groups(yaml.safe_load(text))["gpu"]["template"])["checksum/api-key"]
    assert checksum(API_KEY) == checksum(API_KEY) != checksum(API_KEY + "-rotated")


SUPPLIED = {"apiKey": {"value": API_KEY}, "redis": {"auth": {"password": "pw4e1f0b9c"}}}


@pytest.mark.parametrize("values", [
    pytest.param(ci_values(GITOPS), id="existing-secrets"),
    pytest.param(SUPPLIED, id="explicit-values"),
])
def test_supplied_secrets_render_byte_identically_offline(values: dict[str, Any]) -> None:
    # What GitOps tools need: `helm template` twice, no cluster, no opt-in, the same bytes.
    first = render_files(values, strict_offline=True)
    assert first == render_files(values, strict_offline=True)


def test_existing_secrets_leave_nothing_to_checksum() -> None:
    manifests = render(ci_values(GITOPS))
    assert of_kind(manifests, "Secret") == []
    for name, template in pod_templates(manifests).items():
        assert set(checksums(template)) <= {"checksum/tolerations"}, name


@pytest.mark.parametrize(("values", "what"), [
    pytest.param({}, "the generated API key", id="defaults"),
    pytest.param({"apiKey": {"value": API_KEY}}, "the generated Redis password", id="redis-only"),
    pytest.param({"apiKey": {"existingSecret": "key"}, "redis": {"enabled": False},
                  "externalRedis": {"url": "redis://cache:6379/0"}},
                 "the generated Redis password", id="gcs-redis-still-needs-one"),
])
def test_an_offline_render_that_would_generate_a_secret_is_refused(
        values: dict[str, Any], what: str) -> None:
    # Without a cluster `lookup` finds nothing: a generated value would be new on every
    # render, its checksum too, and every GitOps sync would build a second Ray cluster.
    with pytest.raises(helm.HelmError, match=f"cannot find {what} .* Supply it: .*"
                                             "set generateSecretsOffline=true"):
        render_files(values, strict_offline=True)


def test_throwaway_offline_renders_differ_each_time() -> None:
    first, second = (yaml.safe_load(render_files()[
        "mistral-serve/templates/secret-api-key.yaml"]) for _ in range(2))
    assert first["data"] != second["data"]


@pytest.fixture(scope="module")
def probe_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart plus one template that calls the secret-choosing helper with stand-ins for
    what `lookup` returns from a cluster (offline it always returns nothing)."""
    root = tmp_path_factory.mktemp("chart") / "mistral-serve"
    shutil.copytree(CHART_DIR, root)
    kept = base64.b64encode(b"kept-from-the-cluster").decode()
    in_cluster = f'(dict "data" (dict "api-key" "{kept}"))'
    cases = {  # name: (value, lookup result, online, generateSecretsOffline)
        "existing": ('""', in_cluster, "true", "false"),
        "given": ('"new"', in_cluster, "false", "false"),
        "first-install": ('""', "(dict)", "true", "false"),
        "offline-throwaway": ('""', "(dict)", "false", "true"),
        "offline": ('""', "(dict)", "false", "false"),
    }
    call = '(dict "value" %s "existing" %s "key" "api-key" "online" %s "generateOffline" %s)'
    (root / "templates" / "zz-probe.yaml").write_text("kind: Probe\n" + "".join(
        f'{name}: {{{{ include "mistral-serve.secretSource" {call % case} }}}}\n'
        for name, case in cases.items()) + "value: {{ include \"mistral-serve.pickSecretValue\" "
        + call % ('""', in_cluster, "true", "false") + " }}\n")
    return root


def test_the_secret_source_follows_value_cluster_then_online(probe_chart: Path) -> None:
    rendered = helm.Chart.load(probe_chart).render(OFFLINE, name="llm", namespace=NAMESPACE)
    probe = yaml.safe_load(rendered["mistral-serve/templates/zz-probe.yaml"])
    assert base64.b64decode(probe.pop("value")).decode() == "kept-from-the-cluster"
    assert probe == {"kind": "Probe", "existing": "cluster", "given": "value",
                     "first-install": "generate", "offline-throwaway": "generate",
                     "offline": "refuse"}
