"""The asyncio front: streaming, cancellation freeing blocks, errors before the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from model.sampling_params import SamplingParams
from serve import LLM
from serve.engine.async_engine import AsyncLLMEngine
from serve.engine.errors import QueueFullError
from tests.engine.helpers import assert_all_blocks_free


@pytest.fixture(scope="module")
def async_engine(tiny_checkpoint: Path):
    engine = AsyncLLMEngine(LLM(str(tiny_checkpoint), num_kv_blocks=512).engine)
    yield engine
    engine.shutdown()


def test_stream_matches_offline_generate(async_engine: AsyncLLMEngine,
                                         tiny_checkpoint: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    expected = LLM(str(tiny_checkpoint), num_kv_blocks=64).generate([5, 6, 7, 8], params)[0]

    async def collect() -> tuple[list[int], str, str | None]:
        tokens, text, reason = [], "", None
        async for out in async_engine.generate([5, 6, 7, 8], params):
            tokens += out.outputs[0].delta_token_ids
            text += out.outputs[0].delta_text
            reason = out.outputs[0].finish_reason
        return tokens, text, reason

    tokens, text, reason = asyncio.run(collect())
    assert tokens == expected.outputs[0].token_ids
    assert text == expected.outputs[0].text
    assert reason == "length"


def test_cancelling_streams_frees_every_block(async_engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=400, ignore_eos=True)

    async def consume(i: int, started: asyncio.Event) -> None:
        async for _ in async_engine.generate([5 + i] * 20, params):
            started.set()

    async def scenario() -> None:
        events = [asyncio.Event() for _ in range(20)]
        tasks = [asyncio.create_task(consume(i, e)) for i, e in enumerate(events)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            stats = await async_engine.call(lambda e: e.stats())
            if stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_running == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"blocks not returned within 1 s: {stats}")

    asyncio.run(scenario())
    asyncio.run(async_engine.call(assert_all_blocks_free))


def test_validation_errors_reach_the_caller(async_engine: AsyncLLMEngine) -> None:
    async def bad() -> None:
        async for _ in async_engine.generate([5] * 600, SamplingParams()):
            pass

    with pytest.raises(ValueError, match="600 tokens"):
        asyncio.run(bad())


def test_full_queue_is_refused(tiny_checkpoint: Path) -> None:
    llm = LLM(str(tiny_checkpoint), num_kv_blocks=64, max_num_seqs=1, max_waiting_requests=1)
    llm.engine.add_request("a", [5, 6], SamplingParams())  # starts at the next step
    llm.engine.add_request("b", [5, 6], SamplingParams())  # waits
    with pytest.raises(QueueFullError, match="waiting queue is full"):
        llm.engine.add_request("c", [5, 6], SamplingParams())


@pytest.fixture
def slow_engine(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    """Every model step takes 1.5 s (the runner's fault-injection switch)."""
    from model.envs import FAULT_STEP_DELAY_ENV

    monkeypatch.setenv(FAULT_STEP_DELAY_ENV, "1.5")
    engine = AsyncLLMEngine(LLM(str(tiny_checkpoint), num_kv_blocks=64).engine,
                            stall_timeout_s=1.0)
    yield engine
    engine.shutdown()


def test_a_call_that_times_out_during_a_long_step_leaves_the_loop_alive(
        slow_engine: AsyncLLMEngine) -> None:
    """The long-prompt outage: a stats call timed out while a step ran, the loop then set
    the result of the cancelled future and died of InvalidStateError."""
    params = SamplingParams(max_tokens=2, ignore_eos=True)

    async def scenario() -> list[int]:
        async def collect() -> list[int]:
            return [t for out in [o async for o in slow_engine.generate([5, 6, 7], params)]
                    for t in out.outputs[0].delta_token_ids]

        stream = asyncio.create_task(collect())
        await asyncio.sleep(0.3)  # the first step is running
        with pytest.raises(asyncio.TimeoutError):
            await slow_engine.call(lambda e: e.stats(), timeout_s=0.2)
        return await stream

    assert len(asyncio.run(scenario())) == 2
    assert asyncio.run(slow_engine.call(lambda e: e.stats())).num_running == 0
    assert slow_engine._thread.is_alive() and slow_engine.engine.dead_reason is None


def test_an_add_whose_caller_left_is_not_left_running(slow_engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=50, ignore_eos=True)

    async def scenario() -> None:
        async def consume(prompt: list[int]) -> None:
            async for _ in slow_engine.generate(prompt, params):
                pass

        first = asyncio.create_task(consume([5, 6, 7]))
        await asyncio.sleep(0.3)  # a step runs: the next add waits in the inbox
        second = asyncio.create_task(consume([8, 9, 10]))
        await asyncio.sleep(0.1)
        second.cancel()
        first.cancel()
        await asyncio.gather(first, second, return_exceptions=True)

    asyncio.run(scenario())
    asyncio.run(slow_engine.call(assert_all_blocks_free, timeout_s=30))
    assert slow_engine.engine.num_aborted >= 1


def test_stats_and_liveness_do_not_wait_for_a_step(slow_engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=3, ignore_eos=True)

    async def scenario() -> tuple[int, str | None, str | None]:
        async def consume() -> None:
            async for _ in slow_engine.generate([5, 6, 7], params):
                pass

        stream = asyncio.create_task(consume())
        await asyncio.sleep(1.2)  # inside a 1.5 s step, past the 1 s stall bound
        snapshot = slow_engine.stats  # published by the loop: no wait on the step
        running = snapshot.num_running + snapshot.num_waiting
        stalled = slow_engine.dead_reason
        await stream
        return running, stalled, slow_engine.dead_reason

    running, stalled, after = asyncio.run(scenario())
    assert running == 1
    assert stalled is not None and "stalled" in stalled
    assert after is None  # the step ended: serving again
