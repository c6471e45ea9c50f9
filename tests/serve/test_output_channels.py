"""Output channels end to end on a real engine: the LLMServer in-process (its channel and
request calls as Serve would drive them), then a service of one Ingress and one LLMServer
replica, where every stream of the Ingress shares its one channel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from model.sampling_params import SamplingParams
from serve.engine.config import EngineConfig
from serve.errors import Status
from serve.protocol import ChannelOpen, ServeChunk, ServeRequest

PROMPT = [5, 7, 11, 13] * 5


def params(max_tokens: int, n: int = 1) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, n=n)


@pytest.fixture(scope="module")
def server(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[object]:
    from serve.server.deployment import LLMServer

    server = LLMServer.func_or_class(EngineConfig(model=str(tiny_checkpoint), dtype="float32",
                                                  device="cpu", num_kv_blocks=64))
    yield server
    server.engine.shutdown()


async def drain(call: AsyncIterator[ServeChunk]) -> list[ServeChunk]:
    return [chunk async for chunk in call]


async def free_blocks_return(server: object) -> bool:
    """The engine holds no block of a request any more (the cache may keep their keys)."""
    for _ in range(100):
        stats = await server.engine.call(lambda engine: engine.stats())  # type: ignore[attr-defined]
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_cache_usage == 0:
            return True
        await asyncio.sleep(0.02)
    return False


def test_a_requests_chunks_travel_on_the_channel_and_its_call_ends_empty(server: object
                                                                         ) -> None:
    async def run() -> None:
        opening = ChannelOpen("ingress-a", server.replica_id)  # type: ignore[attr-defined]
        async with contextlib.aclosing(server.channel(opening)) as batches:  # type: ignore[attr-defined]
            assert await anext(batches) == []  # open
            direct = await drain(server.generate(  # type: ignore[attr-defined]
                ServeRequest("direct", PROMPT, params(12))))
            call = asyncio.ensure_future(drain(server.generate(  # type: ignore[attr-defined]
                ServeRequest("via", PROMPT, params(12, n=2), channel_id="ingress-a"))))
            chunks: list[ServeChunk] = []
            while not (chunks and chunks[-1].final):
                batch = await asyncio.wait_for(anext(batches), 30)
                assert {request_id for request_id, _ in batch} == {"via"}
                chunks.extend(chunk for _, chunk in batch)
            assert await asyncio.wait_for(call, 30) == []  # nothing on the call itself
        for index in (0, 1):
            tokens = [t for c in chunks if c.index == index for t in c.token_ids]
            assert tokens == [t for c in direct for t in c.token_ids]  # greedy: equal
        assert chunks[-1].completion_tokens == 24 and chunks[-1].prompt_tokens == 20
        assert await free_blocks_return(server)

    asyncio.run(run())


def test_a_channel_for_another_replica_or_an_unknown_one_carries_nothing(server: object
                                                                         ) -> None:
    async def run() -> None:
        wrong = server.channel(ChannelOpen("ingress-b", "some-other-replica"))  # type: ignore[attr-defined]
        assert [batch async for batch in wrong] == []  # ends without the ack
        # A request naming a channel the replica does not hold streams on its call.
        chunks = await drain(server.generate(  # type: ignore[attr-defined]
            ServeRequest("no-channel", PROMPT, params(4), channel_id="ingress-b")))
        assert sum(len(c.token_ids) for c in chunks) == 4 and chunks[-1].final

    asyncio.run(run())


def test_a_channel_that_closes_under_a_request_fails_it_on_its_call_and_frees_it(
        server: object) -> None:
    async def run() -> None:
        opening = ChannelOpen("ingress-c", server.replica_id)  # type: ignore[attr-defined]
        batches = server.channel(opening)  # type: ignore[attr-defined]
        assert await anext(batches) == []
        call = asyncio.ensure_future(drain(server.generate(  # type: ignore[attr-defined]
            ServeRequest("cut", PROMPT, params(2000), channel_id="ingress-c"))))
        first = await asyncio.wait_for(anext(batches), 30)
        assert first and first[0][0] == "cut"
        await batches.aclose()  # the Ingress went away
        chunks = await asyncio.wait_for(call, 30)
        assert len(chunks) == 1 and chunks[0].error_code == Status.UNAVAILABLE
        assert "retry" in (chunks[0].error or "")
        assert await free_blocks_return(server)

    asyncio.run(run())


def test_a_cancelled_request_on_a_channel_is_aborted(server: object) -> None:
    async def run() -> None:
        opening = ChannelOpen("ingress-d", server.replica_id)  # type: ignore[attr-defined]
        async with contextlib.aclosing(server.channel(opening)) as batches:  # type: ignore[attr-defined]
            assert await anext(batches) == []
            call = asyncio.ensure_future(drain(server.generate(  # type: ignore[attr-defined]
                ServeRequest("gone", PROMPT, params(2000), channel_id="ingress-d"))))
            await asyncio.wait_for(anext(batches), 30)
            call.cancel()  # the client left: Serve cancels the request's call
            with contextlib.suppress(asyncio.CancelledError):
                await call
            assert await free_blocks_return(server)

    asyncio.run(run())


@pytest.fixture(scope="module")
def one_channel_service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[str]:
    from tests.serve.conftest import start_service

    for running in start_service(model=str(tiny_checkpoint), app_name="channels",
                                 engine={"num_kv_blocks": 256, "dtype": "float32"}):
        yield running.target


def open_replicas() -> list[str]:
    from tests.serve.conftest import call_each_replica

    stats = call_each_replica("channels", "Ingress", "output_channel_stats")
    return [replica for s in stats.values() for replica in s["open_replicas"]]


def test_cancelling_the_stream_that_opened_the_channel_leaves_it_open(
        one_channel_service: str) -> None:
    """Serve cancels the calls a request made when that request is cancelled; the channel
    its first chunk opened is not one of them, so the streams on the channel run on."""
    from serve.client import LLMClient

    greedy = {"temperature": 0.0, "ignore_eos": True}
    with LLMClient(one_channel_service, timeout_s=60) as client:
        deadline = time.monotonic() + 30
        while open_replicas():  # idle channels end: the next stream opens one
            assert time.monotonic() < deadline, "the output channel never idled out"
            time.sleep(0.2)
        opener = client.stream_generate("the stream that opens the channel",
                                        max_tokens=400, **greedy)
        next(opener)
        while not open_replicas():
            assert time.monotonic() < deadline, "no output channel opened"
            time.sleep(0.05)
        rider = client.stream_generate("a stream on the channel", max_tokens=60, **greedy)
        chunks = [next(rider)]
        opener.close()  # cancelled, and with it whatever its request called
        chunks.extend(rider)
        assert sum(len(c.token_ids) for c in chunks) == 60
        assert chunks[-1].finish_reason == "length"
        assert open_replicas()
