"""The engine end to end on a tiny random Mistral: batching, prefix cache, preemption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.sampling_params import SamplingParams
from serve import LLM
from serve.engine.errors import PromptTooLongError
from serve.engine.request import RequestStatus
from tests.engine.helpers import assert_all_blocks_free

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def random_prompts(count: int, seed: int = 0, low: int = 5, high: int = 60) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=gen).tolist()
    return [torch.randint(3, 32000, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint: Path) -> LLM:
    return LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32")


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_batch_invariance(llm: LLM) -> None:
    prompts = random_prompts(8)
    together = token_ids(llm.generate(prompts, GREEDY))
    alone = [token_ids(llm.generate([p], GREEDY))[0] for p in prompts]
    assert together == alone
    assert all(len(t) == GREEDY.max_tokens for t in together)
    assert_all_blocks_free(llm.engine)


def test_prefix_cache_hit_on_the_next_turn(llm: LLM, tiny_checkpoint: Path) -> None:
    first_prompt = random_prompts(1, seed=1, low=70, high=71)[0]
    first = llm.generate(first_prompt, GREEDY)[0]
    conversation = first_prompt + first.outputs[0].token_ids + list(range(100, 120))
    second = llm.generate(conversation, GREEDY)[0]
    shared_full_blocks = (len(first_prompt) + len(first.outputs[0].token_ids) - 1) // 16
    assert second.num_cached_tokens >= shared_full_blocks * 16 > 0

    uncached = LLM(str(tiny_checkpoint), num_kv_blocks=256, enable_prefix_caching=False)
    expected = uncached.generate(conversation, GREEDY)[0]
    assert expected.num_cached_tokens == 0
    assert second.outputs[0].token_ids == expected.outputs[0].token_ids
    assert_all_blocks_free(llm.engine)


def test_preemption_completes_everything_with_identical_outputs(tiny_checkpoint: Path,
                                                                llm: LLM) -> None:
    prompts = random_prompts(6, seed=2, low=30, high=50)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    expected = token_ids(llm.generate(prompts, params))
    # 6 requests of up to ~90 tokens need ~36 blocks at once; 12 blocks force preemption.
    small = LLM(str(tiny_checkpoint), num_kv_blocks=12, enable_prefix_caching=False)
    engine = small.engine
    ids = [f"p{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    requests = dict(engine.requests)
    results = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                results[output.request_id] = output.outputs[0].token_ids
    assert sum(r.num_preemptions for r in requests.values()) > 0
    assert [results[i] for i in ids] == expected
    assert_all_blocks_free(engine)


def test_chunked_prefill_keeps_decodes_moving(long_checkpoint: Path) -> None:
    engine = LLM(str(long_checkpoint), num_kv_blocks=400).engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    for i, prompt in enumerate(random_prompts(4, seed=3)):
        engine.add_request(f"d{i}", prompt, params)
    decoders = [engine.requests[f"d{i}"] for i in range(4)]
    engine.step()  # prefill the four short prompts
    long_prompt = random_prompts(1, seed=4, low=4096, high=4097)[0]
    engine.add_request("long", long_prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    long_request = engine.requests["long"]
    chunked_steps = 0
    while long_request.num_computed_tokens < len(long_prompt):
        before = [len(r.output_token_ids) for r in decoders]
        engine.step()
        chunked_steps += 1
        after = [len(r.output_token_ids) for r in decoders]
        assert after == [b + 1 for b in before], "a decode stalled behind the prefill"
    assert chunked_steps >= 2  # 4096 tokens over a 2048-token budget shared with decodes
    while engine.has_unfinished_requests():
        engine.step()
    assert_all_blocks_free(engine)


def test_block_accounting_after_every_kind_of_ending(llm: LLM) -> None:
    engine = llm.engine
    prompts = random_prompts(5, seed=5)
    engine.add_request("finish", prompts[0], SamplingParams(temperature=0, max_tokens=5))
    engine.add_request("abort", prompts[1], SamplingParams(max_tokens=50, ignore_eos=True))
    # Decoded text of a random model always contains a space eventually.
    engine.add_request("stop", prompts[2], SamplingParams(max_tokens=60, stop=[" "],
                                                          ignore_eos=True))
    engine.add_request("eos", prompts[3], SamplingParams(max_tokens=50, temperature=0,
                                                         stop_token_ids=list(range(32000))))
    engine.add_request("waiting", prompts[4], SamplingParams(max_tokens=50))
    engine.abort("waiting")  # aborted before it was ever scheduled
    statuses: dict[str, str | None] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                statuses[output.request_id] = output.outputs[0].finish_reason
        steps += 1
        if steps == 3:
            engine.abort("abort")
    assert statuses == {"finish": "length", "abort": "abort", "stop": "stop", "eos": "stop",
                        "waiting": "abort"}
    assert_all_blocks_free(engine)


def test_failed_step_fails_requests_and_frees_blocks(tiny_checkpoint: Path) -> None:
    llm = LLM(str(tiny_checkpoint), num_kv_blocks=64)
    engine = llm.engine
    engine.add_request("a", [5, 6, 7], SamplingParams(max_tokens=20))
    engine.step()

    def broken(step):
        raise RuntimeError("device lost")

    engine.executor.execute = broken
    outputs = engine.step()
    assert [(o.request_id, o.outputs[0].finish_reason) for o in outputs] == [("a", "error")]
    assert "device lost" in outputs[0].error
    assert_all_blocks_free(engine)
    with pytest.raises(RuntimeError, match="model execution failed"):
        engine.add_request("b", [5], SamplingParams())


def test_prompt_validation(llm: LLM) -> None:
    engine = llm.engine
    with pytest.raises(PromptTooLongError, match=r"600 tokens.*context is 512 tokens"):
        engine.add_request("x", [5] * 600, SamplingParams())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request("x", [5, 32000], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("x", [], SamplingParams())
    assert_all_blocks_free(engine)


def test_seeded_sampling_is_reproducible_in_any_batch(llm: LLM) -> None:
    prompts = random_prompts(4, seed=6)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=1234,
                            ignore_eos=True)
    alone = llm.generate(prompts[0], seeded)[0].outputs[0].token_ids
    mixed = llm.generate(prompts, [seeded] + [SamplingParams(temperature=1.0, max_tokens=10)] * 3)
    assert mixed[0].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=99,
                                ignore_eos=True)
    assert llm.generate(prompts[0], other_seed)[0].outputs[0].token_ids != alone


def test_logprobs_are_returned(llm: LLM) -> None:
    out = llm.generate([5, 6, 7], SamplingParams(temperature=0, max_tokens=3, logprobs=2,
                                                 ignore_eos=True))[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 3
    for token, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert token in entry and len(entry) >= 2
        # Greedy: the sampled token is the most likely one.
        assert entry[token] == max(entry.values())


def test_status_enum_finish_reasons() -> None:
    assert RequestStatus.FINISHED_ABORTED.is_finished
    assert not RequestStatus.PREEMPTED.is_finished


def test_32k_prompt_is_served_and_longer_is_refused(long_checkpoint: Path) -> None:
    llm = LLM(str(long_checkpoint), num_kv_blocks=32768 // 16 + 8)
    assert llm.engine.max_model_len == 32768
    prompt = random_prompts(1, seed=7, low=32760, high=32761)[0]
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.outputs[0].token_ids) == 4
    with pytest.raises(PromptTooLongError, match=r"32768 tokens.*context is 32768 tokens"):
        llm.engine.add_request("too-long", [5] * 32768, SamplingParams())
    assert_all_blocks_free(llm.engine)
