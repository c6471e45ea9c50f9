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
    llm = LLM(str(tiny_checkpoint), num_kv_blocks=64, max_waiting_requests=1)
    llm.engine.add_request("a", [5, 6], SamplingParams())
    with pytest.raises(QueueFullError, match="waiting queue is full"):
        llm.engine.add_request("b", [5, 6], SamplingParams())
