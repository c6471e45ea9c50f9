"""Typed configuration end to end: a misspelt key anywhere (the service config, its engine
section, ``serve deploy`` args, the offline ``LLM``) fails at build time naming the key and
the valid ones, and the Helm chart's schema accepts exactly what the service does."""

from __future__ import annotations

import json

import jsonschema
import pytest

from serve.app import build
from serve.config import ServeConfig
from serve.engine.config import EngineConfig, EngineOptions
from serve.helm_schema import VALUES_SCHEMA, engine_values_schema


def test_a_misspelt_top_level_key_fails_deploy_args_naming_it() -> None:
    # ``serve deploy`` calls the builder with the YAML's args; it must refuse, not drop.
    with pytest.raises(ValueError) as error:
        build({"replica": 2})
    message = str(error.value)
    assert "unknown key 'replica' (did you mean 'replicas'?)" in message
    assert "valid keys:" in message and "ingress_replicas" in message


def test_a_misspelt_engine_key_fails_deploy_args_naming_it() -> None:
    with pytest.raises(ValueError) as error:
        build({"engine": {"blok_size": 16, "dtype": "float32"}})
    message = str(error.value)
    assert "unknown key 'blok_size' (did you mean 'block_size'?) in engine" in message
    assert "max_num_batched_tokens" in message


def test_a_removed_key_fails_saying_it_was_removed() -> None:
    # Charts before the Ingress's own servers sent it; such a config must say what to do.
    with pytest.raises(ValueError) as error:
        ServeConfig(stream_items_per_s=1000)
    message = str(error.value)
    assert "unknown key 'stream_items_per_s' (removed: streams are no longer rationed" in message
    assert "drop the key" in message and "valid keys:" in message


@pytest.mark.parametrize(("section", "values", "key"), [
    ("limits", {"limits": {"max_new_token": 8}}, "max_new_token"),
    ("autoscaling", {"autoscaling": {"min_replica": 1}}, "min_replica"),
])
def test_misspelt_keys_in_every_section_fail(section: str, values: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"unknown key '{key}'.* in {section}"):
        ServeConfig(**values)


@pytest.mark.parametrize(("values", "fragment"), [
    ({"dtype": "fp8"}, "'auto', 'float32', 'float16' or 'bfloat16'"),
    ({"attention_backend": "xformers"}, "'auto', 'torch', 'cpu', 'triton' or 'flash_attn'"),
    ({"load_format": "pt"}, "'auto', 'safetensors' or 'dummy'"),
    ({"device": "tpu"}, "auto|cpu|cuda"),
    ({"cuda_graphs": "yes"}, "valid boolean"),
    ({"kv_cache_memory": 2.0}, "fraction must be in (0, 1]"),
])
def test_engine_options_are_typed(values: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        EngineConfig(model="m", **values)
    assert fragment in str(error.value)


def test_the_offline_api_refuses_a_misspelt_engine_keyword() -> None:
    from serve.llm import LLM

    with pytest.raises(ValueError, match="unknown key 'max_num_seq'"):
        LLM("mistral-7b-v0.2", max_num_seq=4)


def test_the_service_config_builds_the_engine_config() -> None:
    config = ServeConfig(tensor_parallel_size=2, engine={"num_kv_blocks": 8})
    engine = config.engine_config("/ckpt")
    assert (engine.model, engine.tensor_parallel_size, engine.num_kv_blocks) == ("/ckpt", 2, 8)


def test_the_chart_schema_is_generated_from_the_engine_options() -> None:
    chart = json.loads(VALUES_SCHEMA.read_text())["properties"]["engine"]
    assert chart == engine_values_schema(), \
        "helm/mistral-serve/values.schema.json is stale: run python -m serve.helm_schema"
    assert set(chart["properties"]) == set(EngineOptions.model_fields) | {
        "model", "tensor_parallel_size"}


@pytest.mark.parametrize(("engine", "valid"), [
    ({"dtype": "bfloat16", "block_size": 16, "kv_cache_memory": 0.9}, True),
    ({"max_num_seqs": 64, "cuda_graphs": False, "attention_backend": "triton"}, True),
    ({"blok_size": 16}, False),
    ({"dtype": "fp8"}, False),
    ({"tensor_parallel_size": 2}, False),
])
def test_the_chart_schema_and_the_service_agree(engine: dict, valid: bool) -> None:
    validator = jsonschema.Draft7Validator(engine_values_schema())
    assert validator.is_valid(engine) is valid
    try:
        EngineOptions(**engine)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted is valid


def test_the_exported_config_keeps_serves_proxies_off_and_gives_the_ingress_its_ports() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve.app import ingress_options, serve_config

    config = ServeConfig(grpc_port=9100, http_port=8100, ingress_replicas=3,
                         ingress_replicas_per_node=1)
    document = serve_config(config)
    ServeDeploySchema.model_validate(document)
    assert document["proxy_location"] == "Disabled"
    assert "http_options" not in document and "grpc_options" not in document
    (app,) = document["applications"]
    args = app["args"]
    # A deployed app's HTTP server binds every interface; `up` keeps loopback by default.
    assert (args["grpc_port"], args["http_port"], args["host"]) == (9100, 8100, "0.0.0.0")
    assert serve_config(ServeConfig(**args)) == document  # the args rebuild the same app
    assert ServeConfig().host == "127.0.0.1"
    assert ingress_options(config)["max_replicas_per_node"] == 1
    assert "max_replicas_per_node" not in ingress_options(ServeConfig())
