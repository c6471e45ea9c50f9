"""One stream per Ingress replica that carries the chunks of all its requests on a replica.

Every item of a Serve stream costs both ends a hop through Ray (serialization, a report to
the caller, two event loops each side), and in the LLMServer that work takes the GIL from
the engine thread. A request's own call therefore carries no output when its Ingress holds
a channel on the replica: its chunks are put here, and the channel sends everything put
since its previous item as one item, so one engine step of many requests costs one item.

The request's call stays open until its final chunk has been sent (Serve counts it as an
ongoing request, routes and cancels it as before) and answers on the call only when the
channel closed under it. A channel with no request bound to it for ``idle_s`` ends, so that
a draining replica is not held open by it; the Ingress opens another when it needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve.errors import ServiceError, Status
from serve.protocol import ChannelBatch, ServeChunk

# How long a channel with no request bound to it stays open.
DEFAULT_IDLE_S = 2.0


class ChannelClosedError(ServiceError):
    """The channel ended before it sent a request's chunk: the front end that held it is
    gone or went away from this replica. Retryable."""

    status = Status.UNAVAILABLE

    def __init__(self, channel_id: str = "") -> None:
        super().__init__("the stream to the front end closed; retry the request")
        self.channel_id = channel_id


class OutputChannel:
    """The replica's end of one Ingress's channel. Single event loop; not thread-safe."""

    def __init__(self, channel_id: str, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.channel_id = channel_id
        self.idle_s = idle_s
        self.closed = False
        self.num_bound = 0  # requests whose chunks travel here
        self._pending: ChannelBatch = []
        self._wake = asyncio.Event()
        # Batches are numbered from 1; ``_sent`` is the number of the last one yielded.
        self._sent = 0
        # Set (and replaced) each time a batch goes out or the channel closes.
        self._flushed = asyncio.Event()

    def put(self, request_id: str, chunk: ServeChunk) -> int:
        """Queue ``chunk``; returns the number of the batch that will carry it."""
        if self.closed:
            raise ChannelClosedError(self.channel_id)
        self._pending.append((request_id, chunk))
        self._wake.set()
        return self._sent + 1

    async def sent(self, batch: int) -> None:
        """Wait until batch ``batch`` has been handed to Serve; raises if the channel closed
        first."""
        while self._sent < batch and not self.closed:
            await self._flushed.wait()
        if self._sent < batch:
            raise ChannelClosedError(self.channel_id)

    async def batches(self) -> AsyncIterator[ChannelBatch]:
        """The channel's items: first an empty one (the Ingress waits for it to know the
        channel is open), then one per wake-up with everything put since."""
        try:
            yield []
            while True:
                if not self._pending:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.idle_s)
                    except asyncio.TimeoutError:
                        if self.num_bound == 0 and not self._pending:
                            return  # idle: let the replica drain
                        continue
                batch, self._pending = self._pending, []
                # Counted before the yield: a chunk put while the consumer holds this batch
                # goes in the next one. The waiters run only once the batch is handed over.
                self._sent += 1
                self._notify_flushed()
                yield batch
        finally:
            self.closed = True
            self._notify_flushed()

    def _notify_flushed(self) -> None:
        self._flushed.set()
        self._flushed = asyncio.Event()
