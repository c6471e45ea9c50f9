"""Several async streams read as one, each item tagged with its stream's index, in the order
the items arrive (a request's choices, each an engine stream of its own).

Leaving early (the caller stops reading, is cancelled, or one stream fails) cancels the
readers of the others, so each engine request is aborted and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class _Done:
    """A stream ended, with ``error`` or cleanly."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def interleave(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    if len(streams) == 1:  # the common case: no tasks, no queue
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T | _Done]] = asyncio.Queue()

    async def read(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item))
        except Exception as exc:
            queue.put_nowait((index, _Done(exc)))
        else:
            queue.put_nowait((index, _Done(None)))

    tasks = [asyncio.create_task(read(i, stream)) for i, stream in enumerate(streams)]
    live = len(tasks)
    try:
        while live:
            index, item = await queue.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                live -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        # Let each reader run its stream's clean-up (the engine abort) before returning.
        await asyncio.gather(*tasks, return_exceptions=True)
