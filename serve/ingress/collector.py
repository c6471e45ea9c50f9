"""One request's output as the Ingress's servers read it: the chunks collected as they
arrive, and merged when the reader is slower than the engine.

A request's chunks reach it two ways: from the request's own Serve call (read ahead by a
task of its own), or pushed by the Ingress's output channel to the replica
(serve/ingress/channels.py), which then carries them instead. Each read takes everything
waiting of one choice and returns it as one chunk (``merge_chunks``). The engine makes one
chunk per request per step, so a client that keeps up gets each step's tokens as they are
made, and one that reads slower (its connection's flow control holds the server's write)
gets several steps' tokens in one message. Nothing else paces a stream.

An error chunk, or a failure of the call, is never merged with output before it: that output
is returned first, and the error on the next read. The stream ends after the request's
final chunk; a call that ends without one (its chunks were on a channel) is given
``end_grace_s`` for it to arrive, and then fails with ``StreamLostError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from serve.errors import StreamLostError
from serve.protocol import ServeChunk, merge_chunks

# How long a stream whose call ended waits for its final chunk from the channel.
CHANNEL_END_GRACE_S = 5.0


class _End:
    """The call ended, with ``error`` or cleanly."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class RequestCollector:
    def __init__(self, stream: Any,
                 on_call_chunk: Callable[[ServeChunk], None] | None = None,
                 on_close: Callable[[], None] | None = None,
                 end_grace_s: float = 0.0) -> None:
        """``end_grace_s``: how long to wait for pushed chunks after the call ended
        cleanly; 0 for a stream nothing is pushed to."""
        self._stream = stream
        self._on_call_chunk = on_call_chunk
        self._on_close = on_close
        self._end_grace_s = end_grace_s
        self._queue: asyncio.Queue[ServeChunk | _End] = asyncio.Queue()
        self._ready: deque[ServeChunk | _End] = deque()
        self._done = False  # the final chunk was returned
        self._call_ended = False  # the call ended cleanly
        self._closed = False
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

    def __aiter__(self) -> RequestCollector:
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
        self._drain()
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

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()

    def cancel(self) -> None:
        """Cancel the LLMServer call (the engine aborts the request) and the read-ahead."""
        self._close()
        self._task.cancel()
        self._stream.cancel()
