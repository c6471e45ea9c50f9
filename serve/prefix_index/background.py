"""Publish KV events from a background thread, so an engine step never waits on the index.

``LLMEngine`` calls ``event_sink.publish(events)`` inside its step loop. With Redis that is a
network round trip per step, and while Redis hangs it is a ``socket_timeout_s`` wait once per
``retry_interval_s``. Wrapping the publisher moves both off the step: ``publish`` only
appends to a queue; a daemon thread sends everything queued since its last send as ONE batch
(order kept), so a slow index also means fewer, larger round trips rather than a backlog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve.engine.kv_events import AllBlocksCleared, BlockStored, KVEvent
from serve.prefix_index.base import IndexPublisher

logger = logging.getLogger("serve.prefix_index")

DEFAULT_MAX_PENDING_EVENTS = 10_000


@dataclass(eq=False)
class BackgroundPublisher:
    """``IndexPublisher`` that queues events for ``sink`` and sends them from a thread.

    Beyond ``max_pending_events`` queued, new batches are dropped (and counted): the index is
    advisory, expiry heals what a lost batch leaves stale, and memory stays bounded.
    """

    sink: IndexPublisher
    max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS
    num_dropped_events: int = 0
    _pending: list[KVEvent] = field(default_factory=list, repr=False)
    _sending: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)
    _overflowing: bool = field(default=False, repr=False)  # log once per overflow episode
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"kv-events-{self.replica_id}", daemon=True
        )
        self._thread.start()

    @property
    def replica_id(self) -> str:
        return self.sink.replica_id

    def publish(self, events: Sequence[KVEvent]) -> None:
        if not events:
            return
        with self._cond:
            if self._closed:  # the replica is shutting down; nothing will read these
                self.num_dropped_events += len(events)
                return
            if len(self._pending) + len(events) > self.max_pending_events:
                if not self._overflowing:
                    self._overflowing = True
                    logger.warning(
                        "prefix index: KV event queue of replica %s is full (%d events); "
                        "dropping batches until it drains",
                        self.replica_id,
                        len(self._pending),
                    )
                self.num_dropped_events += len(events)
                return
            self._overflowing = False
            self._pending.extend(events)
            self._cond.notify_all()

    def resync(self, stored: Sequence[BlockStored]) -> None:
        """Queued like any batch, so it lands in order with the events around it."""
        with self._cond:
            # A resync supersedes whatever is queued, and must not be dropped for space.
            self._pending = [AllBlocksCleared(), *stored]
            self._cond.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far was sent; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout_s)

    def close(self, timeout_s: float = 1.0) -> None:
        """Send what is queued (for at most ``timeout_s``), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed and drained
                batch, self._pending = self._pending, []
                self._sending = True
            try:
                self.sink.publish(batch)
            except Exception:  # keep the thread alive: the next batch may well succeed
                logger.exception("prefix index: publishing %d KV events failed", len(batch))
            with self._cond:
                self._sending = False
                self._cond.notify_all()
