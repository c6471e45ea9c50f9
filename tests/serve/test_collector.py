"""RequestCollector's merging and ending rules, on an asyncio source the test paces.
The Serve stream and output channel it reads in the service are covered by the service
tests (tests/serve/test_service.py, test_output_channels.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve.errors import Status, StreamLostError
from serve.ingress.collector import RequestCollector
from serve.protocol import ServeChunk


class Source:
    """Yields what the test puts in, when it puts it; records a cancel."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[ServeChunk | BaseException | None] = asyncio.Queue()
        self.cancelled = False

    async def _gen(self) -> AsyncIterator[ServeChunk]:
        while (item := await self.items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __aiter__(self) -> AsyncIterator[ServeChunk]:
        return self._gen()

    def cancel(self) -> None:
        self.cancelled = True


def chunk(text: str, token: int, **kwargs: object) -> ServeChunk:
    return ServeChunk("r", text=text, token_ids=[token], **kwargs)  # type: ignore[arg-type]


def test_a_reader_that_keeps_up_gets_each_chunk_and_one_that_lags_gets_them_joined() -> None:
    async def run() -> None:
        source = Source()
        stream = RequestCollector(source)
        source.items.put_nowait(chunk("a", 1))
        first = await stream.__anext__()
        assert (first.text, first.token_ids) == ("a", [1])
        for i, text in enumerate("bcd"):
            source.items.put_nowait(chunk(text, 2 + i))
        source.items.put_nowait(chunk("e", 5, finish_reason="stop", completion_tokens=5))
        source.items.put_nowait(None)
        await asyncio.sleep(0.05)  # the read-ahead takes all of them
        merged = await stream.__anext__()
        assert (merged.text, merged.token_ids) == ("bcde", [2, 3, 4, 5])
        assert (merged.finish_reason, merged.completion_tokens) == ("stop", 5)
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

    asyncio.run(run())


def test_output_before_an_error_or_a_failure_comes_first() -> None:
    async def run() -> None:
        source = Source()
        stream = RequestCollector(source)
        source.items.put_nowait(chunk("a", 1))
        source.items.put_nowait(ServeChunk("r", finish_reason="error",
                                           error_code=Status.UNAVAILABLE, error="gone"))
        source.items.put_nowait(None)
        await asyncio.sleep(0.05)
        assert (await stream.__anext__()).text == "a"
        assert (await stream.__anext__()).error_code == Status.UNAVAILABLE

        failing = Source()
        stream = RequestCollector(failing)
        failing.items.put_nowait(chunk("x", 9))
        failing.items.put_nowait(RuntimeError("replica died"))
        await asyncio.sleep(0.05)
        assert (await stream.__anext__()).token_ids == [9]
        with pytest.raises(RuntimeError, match="replica died"):
            await stream.__anext__()
        stream.cancel()
        assert failing.cancelled

    asyncio.run(run())


def test_chunks_of_different_choices_are_never_joined() -> None:
    async def run() -> list[tuple[int, str]]:
        source = Source()
        stream = RequestCollector(source)
        for index, text in [(0, "a"), (0, "b"), (1, "x"), (0, "c"), (1, "y")]:
            source.items.put_nowait(chunk(text, 1, index=index))
        source.items.put_nowait(None)
        await asyncio.sleep(0.05)  # everything is waiting before the first read
        return [(item.index, item.text) async for item in stream]

    assert asyncio.run(run()) == [(0, "ab"), (1, "x"), (0, "c"), (1, "y")]


def test_pushed_chunks_join_the_calls_and_the_final_one_may_come_after_the_call_ended() -> None:
    async def run() -> None:
        closed: list[bool] = []
        source = Source()
        stream = RequestCollector(source, on_close=lambda: closed.append(True),
                                  end_grace_s=5.0)
        stream.push(chunk("a", 1))
        assert (await stream.__anext__()).text == "a"
        source.items.put_nowait(None)  # the call ends cleanly: the rest is on the channel
        await asyncio.sleep(0.05)
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        assert not reader.done()  # waiting for the final chunk, not ended
        stream.push(chunk("b", 2, finish_reason="stop", final=True))
        last = await asyncio.wait_for(reader, 1)
        assert (last.text, last.final) == ("b", True)
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        assert closed == [True]

        # A final chunk that never comes: the stream fails after the grace.
        lost = Source()
        stream = RequestCollector(lost, end_grace_s=0.1)
        lost.items.put_nowait(None)
        with pytest.raises(StreamLostError):
            await asyncio.wait_for(stream.__anext__(), 5)

    asyncio.run(run())
