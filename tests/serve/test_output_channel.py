"""The replica's end of an output channel (serve/server/channel.py), on its own event loop:
what a batch carries, when a request's chunk counts as sent, and how a channel ends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from serve.protocol import ServeChunk
from serve.server.channel import ChannelClosedError, OutputChannel


def chunk(token: int, **kwargs: object) -> ServeChunk:
    return ServeChunk("client", token_ids=[token], **kwargs)  # type: ignore[arg-type]


def test_a_batch_carries_everything_put_since_the_last_in_order() -> None:
    async def run() -> None:
        channel = OutputChannel("c", idle_s=5.0)
        async with contextlib.aclosing(channel.batches()) as batches:
            assert await anext(batches) == []  # the ack
            first = channel.put("a", chunk(1))
            second = channel.put("b", chunk(2))
            assert first == second == 1
            batch = await anext(batches)
            assert [(rid, c.token_ids) for rid, c in batch] == [("a", [1]), ("b", [2])]
            third = channel.put("a", chunk(3, final=True))
            assert third == 2
            waiter = asyncio.ensure_future(channel.sent(third))
            await asyncio.sleep(0.01)
            assert not waiter.done()  # not sent until the channel hands batch 2 over
            assert [c.token_ids for _, c in await anext(batches)] == [[3]]
            await asyncio.wait_for(waiter, 1)
            await asyncio.wait_for(channel.sent(1), 1)  # long since sent
            # Put while the consumer holds batch 2: it goes in batch 3.
            assert channel.put("b", chunk(4)) == 3

    asyncio.run(run())


def test_a_closed_channel_refuses_chunks_and_fails_the_waiting() -> None:
    async def run() -> None:
        channel = OutputChannel("c", idle_s=5.0)
        batches = channel.batches()
        assert await anext(batches) == []
        batch = channel.put("a", chunk(1))
        waiter = asyncio.ensure_future(channel.sent(batch))
        await asyncio.sleep(0.01)
        await batches.aclose()  # the Ingress left: Serve closes the generator
        assert channel.closed
        with pytest.raises(ChannelClosedError):
            await asyncio.wait_for(waiter, 1)
        with pytest.raises(ChannelClosedError):
            channel.put("a", chunk(2))

    asyncio.run(run())


def test_an_idle_channel_ends_only_with_no_request_bound() -> None:
    async def run() -> None:
        channel = OutputChannel("c", idle_s=0.05)
        batches = channel.batches()
        assert await anext(batches) == []
        channel.num_bound = 1  # a request is waiting for its first output
        reader = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.2)
        assert not reader.done()
        channel.num_bound = 0
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 1)
        assert channel.closed

    asyncio.run(run())
