"""The Ingress's ends of its output channels: one per LLMServer replica it streams from.

A channel (serve/server/channel.py) is a long-lived Serve call to one replica, pinned there
by the router (``ChannelOpen``), whose items carry the chunks of every request of this
Ingress on that replica. Requests name the channel (``ServeRequest.channel_id``); a replica
that holds it sends their chunks there, one that does not answers on the request's own
call. The first chunk from a replica that comes on a call opens a channel to it, so a
replica's first requests stream on their calls and the rest on the channel.

A channel that fails to open (no ack within ``open_timeout_s``) is retried after
``retry_after_s``; one that ends (idle, or its replica gone) is reopened on demand. The
replica answers a request whose channel closed under it on the request's call, so no
stream here is left waiting on a channel that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from typing import Any

from serve.ingress.collector import RequestCollector
from serve.protocol import ChannelOpen, ServeChunk

logger = logging.getLogger(__name__)

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_RETRY_AFTER_S = 5.0


class IngressChannels:
    def __init__(self, llm: Any, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                 retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        """``llm``: the LLMServer handle, streaming."""
        self.channel_id = uuid.uuid4().hex
        self._llm = llm
        self.open_timeout_s = open_timeout_s
        self.retry_after_s = retry_after_s
        self._streams: dict[str, RequestCollector] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._open: set[str] = set()  # replicas whose channel acknowledged
        self._failed_at: dict[str, float] = {}
        self.num_batches = 0
        self.num_chunks = 0

    def stats(self) -> dict[str, object]:
        """Replicas with an open channel, and what the channels carried so far."""
        return {"open_replicas": sorted(self._open), "num_batches": self.num_batches,
                "num_chunks": self.num_chunks}

    def register(self, request_id: str, stream: RequestCollector) -> None:
        self._streams[request_id] = stream

    def unregister(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def saw_replica(self, replica_id: str) -> None:
        """A chunk came on a request's call from ``replica_id``: open a channel there."""
        if not replica_id or replica_id in self._readers:
            return
        failed = self._failed_at.get(replica_id)
        if failed is not None and time.monotonic() - failed < self.retry_after_s:
            return
        # A context of its own: Serve cancels the calls a request makes (found through the
        # request's context) when that request is cancelled, and the channel outlives the
        # request whose chunk opened it.
        task = asyncio.get_running_loop().create_task(self._read(replica_id),
                                                      context=contextvars.Context())
        self._readers[replica_id] = task

    async def _read(self, replica_id: str) -> None:
        call = self._llm.channel.remote(ChannelOpen(self.channel_id, replica_id))
        try:
            await asyncio.wait_for(call.__anext__(), self.open_timeout_s)  # the ack
            self._open.add(replica_id)
            self._failed_at.pop(replica_id, None)
            async for batch in call:
                self._deliver(batch)
        except StopAsyncIteration:  # the replica refused it (it is not that replica)
            self._failed_at[replica_id] = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timed out opening, or the replica went away
            logger.info("output channel to replica %s ended: %s", replica_id,
                        type(exc).__name__)
            self._failed_at[replica_id] = time.monotonic()
        finally:
            self._open.discard(replica_id)
            if self._readers.get(replica_id) is asyncio.current_task():
                del self._readers[replica_id]
            with contextlib.suppress(Exception):
                call.cancel()

    def _deliver(self, batch: list[tuple[str, ServeChunk]]) -> None:
        self.num_batches += 1
        self.num_chunks += len(batch)
        streams = self._streams
        for request_id, chunk in batch:
            stream = streams.get(request_id)
            if stream is not None:  # else: the client left meanwhile
                stream.push(chunk)
