"""Sizing the KV host tier: bytes or sizes with units, from the engine config, the service
config and ``mistral-serve --kv-host-memory``; refused where it cannot work."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from serve.engine.config import EngineConfig, parse_byte_size


@pytest.mark.parametrize(("given", "expected"), [
    ("8GiB", 8 << 30), ("8GB", 8 * 10**9), ("512 MiB", 512 << 20), ("1.5GiB", 3 << 29),
    ("4096", 4096), (4096, 4096), (0, 0), (None, None),
])
def test_sizes_read_with_their_units(given, expected) -> None:
    config = EngineConfig(model="m", kv_host_memory=given)
    assert config.kv_host_memory == expected
    assert config.runner_config().kv_host_memory == (expected or None)


@pytest.mark.parametrize("given", ["8 parsecs", "lots", -1, 1.5, True])
def test_bad_sizes_are_refused_naming_the_key(given) -> None:
    with pytest.raises(ValidationError, match="kv_host_memory"):
        EngineConfig(model="m", kv_host_memory=given)


def test_parse_byte_size_leaves_non_strings_to_the_type_check() -> None:
    assert parse_byte_size("2KiB") == 2048
    assert parse_byte_size(7) == 7
    with pytest.raises(ValueError, match="8GiB"):
        parse_byte_size("eight gigs")


def test_the_tier_needs_prefix_caching() -> None:
    with pytest.raises(ValidationError, match="enable_prefix_caching"):
        EngineConfig(model="m", kv_host_memory="1GiB", enable_prefix_caching=False)
    assert EngineConfig(model="m", kv_host_memory=0, enable_prefix_caching=False)


def test_the_cli_flag_reaches_the_engine_and_the_serve_config(capsys) -> None:
    from serve.app import serve_config
    from serve.cli import build_parser, main, serve_config_from

    args = build_parser().parse_args(["up", "--kv-host-memory", "8GiB"])
    config = serve_config_from(args)
    assert config.engine_config("m").runner_config().kv_host_memory == 8 << 30
    deployment = serve_config(config)["applications"][0]
    assert yaml.safe_dump(deployment).count("kv_host_memory: 8589934592") == 1
    assert serve_config_from(build_parser().parse_args(["up"])).engine.kv_host_memory is None
    assert main(["config", "--kv-host-memory", "8 parsecs"]) == 2
    assert "not a size" in capsys.readouterr().err
