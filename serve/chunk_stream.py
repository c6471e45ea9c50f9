"""The LLMServer's chunk stream as the front ends read it: read ahead, and coalesced.

A task of its own reads the Serve stream into a queue as chunks arrive; each read takes
everything waiting of one choice and returns it as one chunk (``merge_chunks``). A consumer that keeps up
gets each chunk as soon as it arrives, with no added delay; one that falls behind (a busy
Ingress, a slow client) gets fewer, fuller chunks instead of a backlog of one-token items,
each of which would cost a protobuf message, a proxy hop and a network write.

An error chunk, or a failure of the call, is never merged with output before it: that output
is returned first, and the error on the next read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from serve.protocol import ServeChunk, merge_chunks


class _End:
    """The stream ended, with ``error`` or cleanly."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class CoalescingStream:
    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[ServeChunk | _End] = asyncio.Queue()
        self._ready: deque[ServeChunk | _End] = deque()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for chunk in self._stream:
                self._queue.put_nowait(chunk)
        except asyncio.CancelledError:
            self._queue.put_nowait(_End(asyncio.CancelledError()))
            raise
        except Exception as exc:  # the call failed: the reader raises it
            self._queue.put_nowait(_End(exc))
        else:
            self._queue.put_nowait(_End())

    def __aiter__(self) -> CoalescingStream:
        return self

    async def __anext__(self) -> ServeChunk:
        if not self._ready:
            self._ready.append(await self._queue.get())
        while not self._queue.empty():
            self._ready.append(self._queue.get_nowait())
        chunks: list[ServeChunk] = []
        while self._ready:
            item = self._ready[0]
            if isinstance(item, _End) or (chunks and (item.error_code is not None
                                                      or item.index != chunks[0].index)):
                break  # output first; the end, the error or another choice on the next read
            chunks.append(self._ready.popleft())
            if item.error_code is not None or item.finish_reason is not None:
                break
        if chunks:
            return merge_chunks(chunks)
        end = self._ready[0]
        assert isinstance(end, _End)
        if end.error is not None:
            raise end.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Cancel the LLMServer call (the engine aborts the request) and the read-ahead."""
        self._task.cancel()
        self._stream.cancel()
