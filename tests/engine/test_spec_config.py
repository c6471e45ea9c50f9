"""speculative_config reaches the engine from every door: LLM(...)/EngineConfig (a dict or
JSON text), ServeConfig's engine section, and ``mistral-serve up --speculative-config``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.cli import build_parser, serve_config_from
from serve.config import ServeConfig
from serve.engine.config import EngineConfig


def test_engine_config_reads_a_dict_or_json_text() -> None:
    config = EngineConfig(model="m", speculative_config={"method": "suffix"})
    assert config.speculative_config is not None
    assert config.speculative_config.method == "suffix"
    text = EngineConfig(model="m", speculative_config='{"num_speculative_tokens": 3}')
    assert text.speculative_config is not None
    assert (text.speculative_config.method, text.speculative_config.num_speculative_tokens) \
        == ("ngram", 3)
    assert EngineConfig(model="m").speculative_config is None


@pytest.mark.parametrize("bad", [{"method": "eagle"}, {"num_speculative_tokens": 8},
                                 {"num_speculative_tokens": 2, "lookahead": 1},
                                 {"prompt_lookup_min": 4, "prompt_lookup_max": 2}, "{oops"])
def test_bad_speculative_configs_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        EngineConfig(model="m", speculative_config=bad)


def test_serve_config_and_cli_flag() -> None:
    config = ServeConfig(engine={"speculative_config": {"method": "ngram",
                                                        "num_speculative_tokens": 2}})
    assert config.engine_config("m").speculative_config.num_speculative_tokens == 2
    args = build_parser().parse_args(
        ["up", "--speculative-config", '{"method": "suffix", "num_speculative_tokens": 5}'])
    engine = serve_config_from(args).engine_config("m")
    assert engine.speculative_config is not None
    assert (engine.speculative_config.method,
            engine.speculative_config.num_speculative_tokens) == ("suffix", 5)
