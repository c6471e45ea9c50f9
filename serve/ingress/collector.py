"""The LLMServer's chunk stream as the front ends read it: read ahead, paced and coalesced.

A request's chunks reach its stream two ways: from the request's own Serve call (read
ahead by a task of its own), or pushed by the Ingress's output channel to the replica
(serve/ingress/channels.py), which then carries them instead. Each read takes everything
waiting of one choice and returns it as one chunk (``merge_chunks``).

Reads are paced by the Ingress's item budget (serve/stream_pacing.py): after a chunk, the
next read waits until the stream's share of the budget has passed, so under load each
item carries several tokens (every item costs a Serve hop to the proxy and a message), and
a lone stream, or a few, still gets each token at once. The first read never waits, and
neither does one with the request's last chunk or an error waiting; one that is waiting
when they come ends its wait (with hundreds of streams the gap is most of a second, which
every request's end would otherwise add to its latency).

An error chunk, or a failure of the call, is never merged with output before it: that output
is returned first, and the error on the next read. The stream ends after the request's
final chunk; a call that ends without one (its chunks were on a channel) is given
``end_grace_s`` for it to arrive, and then fails with ``StreamLostError``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from serve.errors import StreamLostError
from serve.protocol import ServeChunk, merge_chunks
from serve.stream_pacing import StreamPacer, StreamPause

# How long a stream whose call ended waits for its final chunk from the channel.
CHANNEL_END_GRACE_S = 5.0


class _End:
    """The call ended, with ``error`` or cleanly."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _ends_pacing(item: ServeChunk | _End) -> bool:
    """Whether ``item`` goes out without waiting for the stream's turn: the request's end,
    an error, or the end of its call."""
    return isinstance(item, _End) or item.final or item.error_code is not None


class CoalescingStream:
    def __init__(self, stream: Any, pacer: StreamPacer | None = None,
                 on_call_chunk: Callable[[ServeChunk], None] | None = None,
                 on_close: Callable[[], None] | None = None,
                 end_grace_s: float = 0.0) -> None:
        """``end_grace_s``: how long to wait for pushed chunks after the call ended
        cleanly; 0 for a stream nothing is pushed to."""
        self._stream = stream
        self._pacer = pacer
        self._on_call_chunk = on_call_chunk
        self._on_close = on_close
        self._end_grace_s = end_grace_s
        self._queue: asyncio.Queue[ServeChunk | _End] = asyncio.Queue()
        self._ready: deque[ServeChunk | _End] = deque()
        self._last_read: float | None = None  # when the previous chunk was returned
        self._done = False  # the final chunk was returned
        self._call_ended = False  # the call ended cleanly
        self._closed = False
        self._pause = StreamPause(pacer) if pacer is not None else None
        if pacer is not None:
            pacer.live += 1
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for chunk in self._stream:
                if self._on_call_chunk is not None:
                    self._on_call_chunk(chunk)
                self._put(chunk)
        except asyncio.CancelledError:
            self._put(_End(asyncio.CancelledError()))
            raise
        except Exception as exc:  # the call failed: the reader raises it
            self._put(_End(exc))
        else:
            self._put(_End())

    def push(self, chunk: ServeChunk) -> None:
        """A chunk of this request from the output channel."""
        self._put(chunk)

    def _put(self, item: ServeChunk | _End) -> None:
        self._queue.put_nowait(item)
        if self._pause is not None and _ends_pacing(item):
            self._pause.end()

    def __aiter__(self) -> CoalescingStream:
        return self

    async def __anext__(self) -> ServeChunk:
        try:
            return await self._next()
        except BaseException:
            self._close()
            raise

    async def _next(self) -> ServeChunk:
        if self._done:
            raise StopAsyncIteration
        await self._pace()
        self._drain()  # what came during the wait goes in this read
        while not self._ready:
            if self._call_ended:
                # The call ended cleanly before the final chunk: it travels on the channel.
                if self._end_grace_s <= 0:
                    raise StopAsyncIteration
                try:
                    item = await asyncio.wait_for(self._queue.get(), self._end_grace_s)
                except asyncio.TimeoutError:
                    raise StreamLostError("the request's final output never came") from None
            else:
                item = await self._queue.get()
            self._take(item)
            self._drain()
        chunks: list[ServeChunk] = []
        while self._ready:
            item = self._ready[0]
            if isinstance(item, _End) or (chunks and (item.error_code is not None
                                                      or item.index != chunks[0].index)):
                break  # output first; the failure, the error or another choice next read
            chunks.append(self._ready.popleft())
            if item.error_code is not None or item.finish_reason is not None:
                break
        if chunks:
            chunk = merge_chunks(chunks)
            self._last_read = time.monotonic()
            if chunk.final:
                self._done = True
                self._close()
            return chunk
        failure = self._ready[0]
        assert isinstance(failure, _End) and failure.error is not None
        raise failure.error

    def _take(self, item: ServeChunk | _End) -> None:
        if isinstance(item, _End) and item.error is None:
            self._call_ended = True  # chunks may still come from the channel
        else:
            self._ready.append(item)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._take(self._queue.get_nowait())

    async def _pace(self) -> None:
        """Wait out this stream's share of the item budget since its previous chunk, unless
        the request's end or an error has come (``_put`` ends the pause then)."""
        if self._pause is not None and self._last_read is not None:
            await self._pause.after(self._last_read)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pacer is not None:
            self._pacer.live -= 1
        if self._on_close is not None:
            self._on_close()

    def cancel(self) -> None:
        """Cancel the LLMServer call (the engine aborts the request) and the read-ahead."""
        self._close()
        self._task.cancel()
        self._stream.cancel()
