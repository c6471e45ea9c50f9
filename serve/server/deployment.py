"""The LLMServer deployment: one engine (and its tensor-parallel worker group) per replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from ray import serve

from model.factory import resolve_device
from serve.engine.async_engine import AsyncLLMEngine
from serve.engine.config import EngineConfig
from serve.engine.factory import create_engine
from serve.engine.request import RequestOutput, coalesce
from serve.errors import Status, status_of
from serve.metrics import ServerMetrics
from serve.prefix_index.access import make_publisher
from serve.protocol import ChannelBatch, ChannelOpen, ServeChunk, ServeRequest
from serve.server.channel import ChannelClosedError, OutputChannel
from serve.server.outputs import RequestTiming
from serve.server.parent_request import ParentRequest

logger = logging.getLogger(__name__)
SERVE_LOGGER = logging.getLogger("ray.serve")

# How often the engine gauges (KV blocks, queue) are refreshed; Ray exports every ~10 s.
METRICS_PERIOD_S = 5.0


@serve.deployment(name="LLMServer")
class LLMServer:
    def __init__(self, config: EngineConfig, redis_url: str | None = None,
                 index_resync_s: float = 30.0) -> None:
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (tests, benchmarks)
            self.replica_id = f"local-{uuid.uuid4().hex[:8]}"
        self.publisher = make_publisher(redis_url, self.replica_id)
        engine = create_engine(config, event_sink=self.publisher)
        self.engine = AsyncLLMEngine(engine)
        self.model_config = engine.model_config
        self.index_resync_s = index_resync_s
        self.channels: dict[str, OutputChannel] = {}
        self._resync_task: asyncio.Task[None] | None = None
        self.metrics = ServerMetrics()
        self._metrics_task: asyncio.Task[None] | None = None
        logger.info("LLMServer %s ready: %s", self.replica_id, engine.stats())
        if resolve_device(config.device).type == "cpu":
            # Serve's logger: what reaches the replica's log (module loggers stay at WARNING).
            SERVE_LOGGER.info("LLMServer %s computes with %d CPU threads per rank",
                              self.replica_id, config.cpu_threads or torch.get_num_threads())

    def _ensure_resync(self) -> None:
        # Started from the first call, inside the replica's event loop.
        if self._resync_task is None:
            self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())
        if self._metrics_task is None:
            self._metrics_task = asyncio.get_running_loop().create_task(self._metrics_loop())

    async def _metrics_loop(self) -> None:
        """Engine gauges now and then, so they move even while no request finishes."""
        while True:
            try:
                await self._engine_stats()
            except Exception:
                logger.debug("engine stats for metrics failed", exc_info=True)
            await asyncio.sleep(METRICS_PERIOD_S)

    async def _engine_stats(self) -> Any:
        """The engine's stats; every caller refreshes the gauges on the way."""
        # The snapshot the engine loop publishes after every step: never waits on a step.
        stats = self.engine.stats
        self.metrics.record_engine_stats(stats)
        return stats

    async def _resync_loop(self) -> None:
        """Republish every cached block now and then: the index may have lost them (Redis
        restarted, keys expired) while this replica still holds their KV."""
        while True:
            await asyncio.sleep(self.index_resync_s)
            try:
                # Every key the replica holds, device and host tier alike.
                stored = await self.engine.call(
                    lambda engine: engine.block_manager.pool.resync_events())
                self.publisher.resync(stored)
            except asyncio.TimeoutError:
                # A long step holds the engine thread; the next period tries again.
                logger.warning("republishing cached blocks skipped: the engine is busy")
            except Exception:
                logger.exception("republishing cached blocks failed")

    async def generate(self, request: ServeRequest) -> AsyncIterator[ServeChunk]:
        """Stream the request's output, one item per engine step (every choice's new output
        since the previous item, merged per choice); errors arrive as a final chunk with
        error_code.

        With the request's output channel open here, the chunks go there instead and this
        call ends, with nothing, once the final one is sent (serve/server/channel.py)."""
        self._ensure_resync()
        timing = RequestTiming(time.perf_counter())
        parent = ParentRequest(request, self.replica_id, timing)
        channel = self.channels.get(request.channel_id) if request.channel_id else None
        if channel is not None and channel.closed:  # closing: the call carries the chunks
            channel = None
        try:
            if channel is not None:
                await self._on_channel(parent, channel)
                return
            ready: asyncio.Queue[tuple[int, RequestOutput | BaseException]] = asyncio.Queue()
            await parent.start(self.engine, lambda i, item: ready.put_nowait((i, item)))
            while True:
                items = [await ready.get()]
                while not ready.empty():
                    items.append(ready.get_nowait())
                chunks, failure = _chunks_of(parent, items)
                for chunk in chunks:
                    yield chunk
                    if chunk.final or chunk.error_code is not None:
                        return
                if failure is not None:
                    raise failure
        except Exception as exc:
            timing.failed = True
            yield self._error_for(request, exc)
        finally:
            # Also reached when the caller leaves early (GeneratorExit): an abort.
            if not parent.complete:
                parent.abort(self.engine)
            with contextlib.suppress(Exception):  # metrics never fail a request
                self.metrics.record_request(timing.record())

    async def _on_channel(self, parent: ParentRequest, channel: OutputChannel) -> None:
        """Run the request with its chunks put on ``channel`` straight from the engine's
        hand-off (no coroutine per request per step); return once the final one is sent."""
        request_id = parent.request.request_id
        # The number of the batch with the request's last chunk, or why it ended early.
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def put(index: int, item: RequestOutput | BaseException) -> None:
            if done.done():
                return
            if isinstance(item, BaseException):
                done.set_exception(item)
                return
            chunk = parent.chunk(index, item)
            try:
                batch = channel.put(request_id, chunk)
            except ChannelClosedError as exc:
                done.set_exception(exc)
                return
            if chunk.final or chunk.error_code is not None:
                done.set_result(batch)

        channel.num_bound += 1
        try:
            await parent.start(self.engine, put)
            await channel.sent(await done)
        finally:
            channel.num_bound -= 1

    def _error_for(self, request: ServeRequest, exc: Exception) -> ServeChunk:
        """The final chunk that reports ``exc`` to the client (``status_of`` decides)."""
        error = status_of(exc, request.request_id)
        return self._error(request, error.status, error.message)

    async def channel(self, opening: ChannelOpen) -> AsyncIterator[ChannelBatch]:
        """An Ingress's output channel on this replica (serve/server/channel.py): an empty
        item once it is open, then the chunks of the requests that name it. Ends at once
        when sent to another replica, and by itself when idle."""
        if opening.replica_id != self.replica_id:
            return
        channel = OutputChannel(opening.channel_id)
        # A newer channel by the same id takes new requests; the old one serves its own.
        self.channels[opening.channel_id] = channel
        try:
            async with contextlib.aclosing(channel.batches()) as batches:
                async for batch in batches:
                    yield batch
        finally:
            if self.channels.get(opening.channel_id) is channel:
                del self.channels[opening.channel_id]

    def _error(self, request: ServeRequest, status: Status, message: str) -> ServeChunk:
        return ServeChunk(request.echo_id, finish_reason="error", error_code=status,
                          error=message, replica_id=self.replica_id, final=True)

    async def stats(self) -> dict[str, Any]:
        stats = await self._engine_stats()
        return {"replica_id": self.replica_id, **stats.__dict__}

    async def ready(self) -> bool:
        """Whether this replica serves (the Ingress's readiness asks it through Serve)."""
        return self.engine.dead_reason is None

    async def check_health(self) -> None:
        """Serve replaces the replica when this raises."""
        self._ensure_resync()
        reason = self.engine.dead_reason
        if reason is not None:
            raise RuntimeError(reason)

    async def record_routing_stats(self) -> dict[str, Any]:
        """Load the router weighs beside Serve's own queue length."""
        stats = await self._engine_stats()
        return {"num_waiting": stats.num_waiting, "num_running": stats.num_running,
                "kv_cache_usage": stats.kv_cache_usage}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine signals the autoscaling policy scales on (serve/autoscaling.py); Serve
        calls this on the replica when autoscaling is configured."""
        stats = await self._engine_stats()
        return {"num_waiting": float(stats.num_waiting),
                "num_running": float(stats.num_running),
                "kv_cache_usage": float(stats.kv_cache_usage)}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def _chunks_of(parent: ParentRequest, items: list[tuple[int, RequestOutput | BaseException]]
               ) -> tuple[list[ServeChunk], BaseException | None]:
    """One engine hand-off (or several, if the reader fell behind) as chunks, each choice's
    outputs merged into one, and the error that ended a choice, if one came (it is raised
    after the output before it is sent)."""
    outputs: dict[int, list[RequestOutput]] = {}
    for index, item in items:
        if isinstance(item, BaseException):
            return [parent.chunk(i, coalesce(group)) for i, group in outputs.items()], item
        outputs.setdefault(index, []).append(item)
    return [parent.chunk(index, coalesce(group)) for index, group in outputs.items()], None
