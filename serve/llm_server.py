"""The LLMServer deployment: one engine (and its tensor-parallel worker group) per replica."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve.engine.async_engine import AsyncLLMEngine
from serve.engine.config import EngineConfig
from serve.engine.engine import EngineDeadError, PromptTooLongError
from serve.engine.factory import create_engine
from serve.engine.kv_events import BlockStored
from serve.engine.request import RequestOutput
from serve.engine.scheduler import QueueFullError
from serve.index_access import make_publisher
from serve.protocol import (
    INTERNAL,
    INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    ServeChunk,
    ServeRequest,
)

logger = logging.getLogger(__name__)


def _chunk(output: RequestOutput, replica_id: str) -> ServeChunk:
    completion = output.outputs[0]
    new = len(completion.delta_token_ids)
    chunk = ServeChunk(
        request_id=output.request_id,
        text=completion.delta_text,
        token_ids=list(completion.delta_token_ids),
        logprobs=list(completion.logprobs[-new:]) if completion.logprobs and new else [],
        finish_reason=completion.finish_reason,
        stop_reason=completion.stop_reason,
        replica_id=replica_id,
    )
    if output.finished:
        chunk.prompt_tokens = len(output.prompt_token_ids)
        chunk.completion_tokens = len(completion.token_ids)
        chunk.cached_tokens = output.num_cached_tokens
        if completion.finish_reason == "error":
            chunk.error_code, chunk.error = UNAVAILABLE, output.error or "the replica failed"
    return chunk


@serve.deployment(name="LLMServer")
class LLMServer:
    def __init__(self, engine_config: dict[str, Any], redis_url: str | None = None,
                 index_resync_s: float = 30.0) -> None:
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (tests, benchmarks)
            self.replica_id = f"local-{uuid.uuid4().hex[:8]}"
        config = EngineConfig(**engine_config)
        self.publisher = make_publisher(redis_url, self.replica_id)
        engine = create_engine(config, event_sink=self.publisher)
        self.engine = AsyncLLMEngine(engine)
        self.model_config = engine.model_config
        self.index_resync_s = index_resync_s
        self._resync_task: asyncio.Task[None] | None = None
        logger.info("LLMServer %s ready: %s", self.replica_id, engine.stats())

    def _ensure_resync(self) -> None:
        # Started from the first call, inside the replica's event loop.
        if self._resync_task is None:
            self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())

    async def _resync_loop(self) -> None:
        """Republish every cached block now and then: the index may have lost them (Redis
        restarted, keys expired) while this replica still holds their KV."""
        while True:
            await asyncio.sleep(self.index_resync_s)
            try:
                hashes, block_size = await self.engine.call(
                    lambda engine: (engine.block_manager.pool.cached_hashes(),
                                    engine.config.block_size))
                stored = BlockStored(hashes, None, len(hashes) * block_size)
                self.publisher.resync([stored] if hashes else [])
            except Exception:
                logger.exception("republishing cached blocks failed")

    async def generate(self, request: ServeRequest) -> AsyncIterator[ServeChunk]:
        """Stream the request's output; errors arrive as a final chunk with error_code."""
        self._ensure_resync()
        try:
            stream = self.engine.generate(request.prompt_token_ids, request.params,
                                          request.request_id, request.cache_salt)
            async for output in stream:
                yield _chunk(output, self.replica_id)
        except (PromptTooLongError, ValueError) as exc:
            yield ServeChunk(request.request_id, finish_reason="error",
                             error_code=INVALID_ARGUMENT, error=str(exc),
                             replica_id=self.replica_id)
        except QueueFullError as exc:
            yield ServeChunk(request.request_id, finish_reason="error",
                             error_code=RESOURCE_EXHAUSTED, error=str(exc),
                             replica_id=self.replica_id)
        except EngineDeadError as exc:
            yield ServeChunk(request.request_id, finish_reason="error", error_code=UNAVAILABLE,
                             error=f"{exc}; retry", replica_id=self.replica_id)
        except Exception as exc:
            logger.exception("request %s failed", request.request_id)
            yield ServeChunk(request.request_id, finish_reason="error", error_code=INTERNAL,
                             error=f"internal error: {type(exc).__name__}",
                             replica_id=self.replica_id)

    async def stats(self) -> dict[str, Any]:
        stats = await self.engine.call(lambda engine: engine.stats())
        return {"replica_id": self.replica_id, **stats.__dict__}

    async def check_health(self) -> None:
        """Serve replaces the replica when this raises."""
        self._ensure_resync()
        if not self.engine.is_healthy:
            raise RuntimeError(self.engine.engine.dead_reason or "engine loop stopped")

    async def record_routing_stats(self) -> dict[str, Any]:
        """Load the router weighs beside Serve's own queue length."""
        stats = await self.engine.call(lambda engine: engine.stats())
        return {"num_waiting": stats.num_waiting, "num_running": stats.num_running,
                "kv_cache_usage": stats.kv_cache_usage}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
