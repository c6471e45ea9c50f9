"""Several choices for one prompt: one engine request per choice, sharing the prompt's KV."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.sampling_params import MAX_SEED, MIN_SEED, SamplingParams
from serve.engine.choices import choice_params, choice_request_id
from serve.engine.errors import InvalidRequestError
from serve.engine.scheduler import SchedulerOutput
from serve.llm import LLM
from tests.engine.helpers import assert_all_blocks_free


def test_choice_params_and_ids() -> None:
    params = SamplingParams(n=3, seed=MAX_SEED, temperature=1.0)
    seeds = [choice_params(params, i).seed for i in range(3)]
    assert seeds == [MAX_SEED, MIN_SEED, MIN_SEED + 1]  # wraps within the generator's range
    assert {choice_params(params, i).n for i in range(3)} == {1}
    assert choice_params(SamplingParams(n=2), 1).seed is None
    assert [choice_request_id("r", i, 3) for i in range(3)] == ["r.0", "r.1", "r.2"]
    assert choice_request_id("r", 0, 1) == "r"
    with pytest.raises(ValueError, match="n must be >= 1"):
        SamplingParams(n=0)


def test_offline_choices_equal_seeded_single_requests_and_share_the_prompt(
        tiny_checkpoint: Path) -> None:
    prompt = list(range(100, 140))  # 40 tokens: 2 full blocks of 16 and a partial one
    with LLM(str(tiny_checkpoint), num_kv_blocks=128) as llm:
        engine = llm.engine
        schedule = engine.scheduler.schedule
        prefill_tokens = 0

        def counting(ahead: bool = False) -> SchedulerOutput:
            nonlocal prefill_tokens
            out = schedule(ahead)
            prefill_tokens += sum(item.num_new_tokens for item in out.scheduled
                                  if item.request.num_output_tokens == 0)
            return out

        engine.scheduler.schedule = counting  # type: ignore[method-assign]
        params = SamplingParams(n=3, seed=21, temperature=1.0, max_tokens=6, ignore_eos=True)
        output = llm.generate(prompt, params)[0]
        # The first choice computes the prompt; the others hit its two full blocks.
        assert prefill_tokens == 40 + 2 * 8
        engine.scheduler.schedule = schedule  # type: ignore[method-assign]
        singles = [llm.generate(prompt, SamplingParams(seed=21 + i, temperature=1.0,
                                                       max_tokens=6, ignore_eos=True))[0]
                   for i in range(3)]
        assert_all_blocks_free(engine)
        with pytest.raises(InvalidRequestError, match="one choice"):
            engine.add_request("direct", prompt, params)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert [c.token_ids for c in output.outputs] == [s.outputs[0].token_ids for s in singles]
    assert output.usage == {"prompt_tokens": 40, "completion_tokens": 18,
                            "cached_tokens": 0}
