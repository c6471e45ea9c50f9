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
turn when one arrives ends the wait (``end_wait``).
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

    def turn(self, sent_at: float) -> asyncio.Future[None] | None:
        """A future that resolves when the stream's next item may go, or None when it may
        go now. The stream ends the wait sooner (``end_wait``) when what arrived must not
        wait its turn: the request's end or an error."""
        wait = self.wait_s(sent_at)
        if not wait:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(wait, end_wait, future)
        future.add_done_callback(lambda _: timer.cancel())
        return future


def end_wait(turn: asyncio.Future[None] | None) -> None:
    """End a wait from ``StreamPacer.turn`` now (nothing if it is over, or None)."""
    if turn is not None and not turn.done():
        turn.set_result(None)
