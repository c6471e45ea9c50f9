"""How often the streams of one Ingress replica (or of one LLMServer replica, for streams
without an output channel) may each send an item.

Every item a stream sends to the proxy crosses a Serve hop and becomes a protobuf message
or an SSE event: the cost of that path is per item, not per token. So a replica spends a
budget of items per second across its live streams: after an item, a stream waits until
``live streams / items_per_s`` has passed since its last one, and the output that arrives
meanwhile goes out together (``CoalescingStream`` in the Ingress, ``AsyncLLMEngine.generate``
in the LLMServer). A lone stream, or a few, waits well under a millisecond, so each token
goes out as it is made; hundreds share the budget, several tokens per item. The first item
of a stream never waits, and neither does a request's end or an error: a stream waiting its
turn when one arrives ends the wait (``StreamPause``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

# Below this a wait is not worth a timer: the item goes out at once.
_MIN_WAIT_S = 0.001


@dataclass
class StreamPacer:
    items_per_s: float
    live: int = 0

    def gap_s(self) -> float:
        """The time one stream leaves between two of its items now."""
        return self.live / self.items_per_s

    def wait_s(self, sent_at: float) -> float:
        """How long the stream whose previous item went at ``sent_at`` (``time.monotonic``)
        waits before its next one; 0 for no wait."""
        wait = sent_at + self.gap_s() - time.monotonic()
        return wait if wait >= _MIN_WAIT_S else 0.0


class StreamPause:
    """One stream's pause between its items: ``after(sent_at)`` waits out the stream's turn
    since its item at ``sent_at``; ``end()``, called when the request's end or an error
    arrives, ends a wait under way and lets every later item of the stream go at once."""

    __slots__ = ("_pacer", "_turn", "ended")

    def __init__(self, pacer: StreamPacer) -> None:
        self._pacer = pacer
        self._turn: asyncio.Future[None] | None = None
        self.ended = False

    def end(self) -> None:
        self.ended = True
        _resolve(self._turn)

    async def after(self, sent_at: float) -> None:
        if self.ended:
            return
        wait = self._pacer.wait_s(sent_at)
        if not wait:
            return
        # asyncio.sleep's own timer and future, kept so that ``end`` can cut the wait short.
        loop = asyncio.get_running_loop()
        self._turn = turn = loop.create_future()
        timer = loop.call_later(wait, _resolve, turn)
        try:
            await turn
        finally:
            timer.cancel()
            self._turn = None


def _resolve(turn: asyncio.Future[None] | None) -> None:
    if turn is not None and not turn.done():
        turn.set_result(None)
