"""Speculative decoding end to end on a tiny random Mistral: the output is the output
without speculation, token for token, whatever the drafts, with prefix caching, preemption,
the scheduled-ahead loop, seeds, penalties, masks, logprobs and stop tokens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from model.sampling_params import SamplingParams
from serve import LLM
from serve.engine.engine import LLMEngine
from tests.engine.helpers import assert_all_blocks_free
from tests.engine.test_step_chaining import run_chained, run_series


def repetitive_prompts(count: int, seed: int) -> list[list[int]]:
    """Prompts that repeat a phrase, so prompt lookup finds drafts (the random model's own
    tokens rarely follow them: most drafts are rejected, some accepted)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        phrase = [rng.randrange(3, 32000) for _ in range(rng.choice([3, 6, 11]))]
        prompts.append(phrase * rng.choice([3, 5, 9]) + [rng.randrange(3, 32000)])
    return prompts


def spec(method: str, k: int = 4, **extra: object) -> dict[str, object]:
    """Drafts at any batch size these tests run, unless a test says otherwise."""
    return {"method": method, "num_speculative_tokens": k, "disable_by_batch_size": 64,
            **extra}


def generate(llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
             ) -> list[tuple[list[int], str | None]]:
    outputs = llm.generate(prompts, params)
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outputs]


def assert_close_logprobs(got: list[dict[int, float]] | None,
                          want: list[dict[int, float]] | None) -> None:
    """Same tokens; values equal up to the float32 rounding of a (k + 1)-token forward."""
    if want is None:
        assert got is None
        return
    assert got is not None and len(got) == len(want)
    for have, expect in zip(got, want, strict=True):
        assert have.keys() == expect.keys()
        assert all(abs(have[t] - expect[t]) < 1e-3 for t in expect)


@pytest.fixture(scope="module")
def plain(tiny_checkpoint: Path) -> LLM:
    return LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32")


def self_copying_prompts(plain: LLM, count: int) -> list[list[int]]:
    """Prompts that hold the model's own continuation of them, so drafts are accepted: the
    random model's greedy output for a prefix, appended, then the prefix again."""
    prefixes = repetitive_prompts(count, seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    continuations = [tokens for tokens, _ in generate(plain, prefixes, params)]
    return [p + c + p for p, c in zip(prefixes, continuations, strict=True)]


@pytest.mark.parametrize("method", ["ngram", "suffix"])
def test_greedy_is_token_identical_and_drafts_are_accepted(
        tiny_checkpoint: Path, plain: LLM, method: str) -> None:
    prompts = self_copying_prompts(plain, 6) + repetitive_prompts(4, seed=9)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    expected = generate(plain, prompts, params)
    with LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32",
             speculative_config=spec(method)) as llm:
        got = generate(llm, prompts, params)
        # Again: now every prompt's blocks are in the prefix cache.
        again = generate(llm, prompts, params)
        stats = llm.engine.stats()
        assert_all_blocks_free(llm.engine)
    assert got == expected
    assert again == expected
    assert stats.num_spec_accepted_tokens > 20
    assert 0 < stats.num_spec_accepted_tokens < stats.num_spec_draft_tokens
    assert stats.num_device_hit_tokens > 0


def test_sampled_requests_match_with_seeds_penalties_masks_and_logprobs(
        tiny_checkpoint: Path, plain: LLM) -> None:
    """A seeded request draws its verification rows from its own generator and rewinds it
    to where plain decoding leaves it, so the same seed gives the same tokens."""
    prompts = self_copying_prompts(plain, 4)
    params = [
        SamplingParams(temperature=0.8, seed=1, max_tokens=25, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=25, ignore_eos=True,
                       repetition_penalty=1.3, frequency_penalty=0.5, logprobs=0),
        SamplingParams(temperature=1.0, seed=3, top_k=50, max_tokens=25, ignore_eos=True,
                       logit_bias={100: 5.0}, presence_penalty=0.5),
        SamplingParams(temperature=0.0, max_tokens=25, min_tokens=10, ignore_eos=False,
                       bad_words_token_ids=[[prompts[3][5], prompts[3][6]]]),
    ]
    expected = plain.generate(prompts, params)
    with LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32",
             speculative_config=spec("ngram", adaptive=False)) as llm:
        got = llm.generate(prompts, params)
        stats = llm.engine.stats()
    for want, have in zip(expected, got, strict=True):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
        assert_close_logprobs(have.outputs[0].logprobs, want.outputs[0].logprobs)
    assert stats.num_spec_accepted_tokens > 0


def test_a_stop_token_inside_an_accepted_run_ends_the_request_there(
        tiny_checkpoint: Path, plain: LLM) -> None:
    prompts = self_copying_prompts(plain, 4)
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    continuations = [tokens for tokens, _ in generate(plain, prompts, greedy)]
    params = [SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                             stop_token_ids=[tokens[7]]) for tokens in continuations]
    expected = generate(plain, prompts, params)
    with LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32",
             speculative_config=spec("suffix")) as llm:
        assert generate(llm, prompts, params) == expected
        assert_all_blocks_free(llm.engine)
    assert all(reason == "stop" for _, reason in expected)


def test_preemption_with_drafts_gives_identical_outputs(tiny_checkpoint: Path,
                                                        plain: LLM) -> None:
    prompts = self_copying_prompts(plain, 6)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    expected = generate(plain, prompts, params)
    # The prompts need ~6 blocks each and grow by 2-3: 16 blocks hold two or three at once.
    with LLM(str(tiny_checkpoint), num_kv_blocks=16, dtype="float32",
             speculative_config=spec("ngram")) as llm:
        engine = llm.engine
        for i, prompt in enumerate(prompts):
            engine.add_request(f"p{i}", prompt, params)
        requests = dict(engine.requests)
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = (out.outputs[0].token_ids,
                                            out.outputs[0].finish_reason)
        assert sum(r.num_preemptions for r in requests.values()) > 0
        assert sum(r.num_accepted_draft_tokens for r in requests.values()) > 0
        assert [done[f"p{i}"] for i in range(len(prompts))] == expected
        assert_all_blocks_free(engine)


@pytest.mark.parametrize("disable_by_batch_size", [4, 64])
def test_the_scheduled_ahead_loop_with_speculation_matches_the_series_loop(
        tiny_checkpoint: Path, plain: LLM, disable_by_batch_size: int) -> None:
    """With few requests the loop runs in series and speculates; with more than the
    threshold it chains steps ahead without drafts; it switches as requests finish."""
    prompts = self_copying_prompts(plain, 8)
    items = [(p, SamplingParams(temperature=0.0 if i % 2 else 0.9, seed=i,
                                max_tokens=10 + 3 * i, ignore_eos=True))
             for i, p in enumerate(prompts)]
    args = dict(num_kv_blocks=256, max_num_batched_tokens=64, max_num_seqs=8,
                dtype="float32")
    with LLM(str(tiny_checkpoint), **args) as series_llm:
        expected = run_series(series_llm.engine, items)
    config = spec("ngram", disable_by_batch_size=disable_by_batch_size)
    with LLM(str(tiny_checkpoint), speculative_config=config, **args) as llm:
        got, counts = run_chained(llm.engine, items)
        stats = llm.engine.stats()
        assert_all_blocks_free(llm.engine)
    assert got == expected
    assert stats.num_spec_accepted_tokens > 0
    assert (counts["chained"] > 0) == (disable_by_batch_size == 4)


def test_a_request_that_opts_out_gets_no_drafts(plain: LLM,
                                                             tiny_checkpoint: Path) -> None:
    prompts = self_copying_prompts(plain, 2)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                            num_speculative_tokens=0)
    with LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32",
             speculative_config=spec("ngram")) as llm:
        outputs = llm.generate(prompts, params)
        engine: LLMEngine = llm.engine
        assert engine.stats().num_spec_draft_tokens == 0
        assert all(o.num_draft_tokens == 0 for o in outputs)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SamplingParams(num_speculative_tokens=-1)
