"""The asyncio front of the engine: one background thread steps the engine, coroutines stream.

The engine itself is single-threaded. Coroutines never touch it directly: they post
commands (add, abort) to an inbox that the engine thread drains before each step, and they
receive outputs on their own asyncio queue. Leaving a stream early (cancel, break, client
gone) aborts the request, which returns its KV blocks on the next engine iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.sampling_params import SamplingParams
from serve.engine.engine import LLMEngine
from serve.engine.errors import EngineDeadError
from serve.engine.request import RequestOutput

logger = logging.getLogger(__name__)

# How long a stream waits between liveness checks of the engine thread.
_POLL_S = 1.0


@dataclass
class _Add:
    request_id: str
    prompt: str | Sequence[int]
    params: SamplingParams
    cache_salt: str | None
    loop: asyncio.AbstractEventLoop
    stream: asyncio.Queue[RequestOutput | BaseException]
    accepted: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Run a function on the engine thread (stats, reset) and hand back its result."""

    fn: Any
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._inbox: queue.Queue[_Add | _Abort | _Call | None] = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._ids = itertools.count()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    # ---- public API (any thread / event loop) ---------------------------------------

    @property
    def is_healthy(self) -> bool:
        return self._thread.is_alive() and self.engine.dead_reason is None

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                       request_id: str | None = None, cache_salt: str | None = None,
                       add_timeout_s: float = 30.0) -> AsyncIterator[RequestOutput]:
        """Stream outputs until the request finishes; raises the engine's validation errors
        (ValueError, QueueFullError, EngineDeadError) before the first output."""
        request_id = request_id or f"req-{next(self._ids)}"
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        command = _Add(request_id, prompt, params or SamplingParams(), cache_salt,
                       asyncio.get_running_loop(), stream)
        self._post(command)
        await asyncio.wait_for(asyncio.wrap_future(command.accepted), add_timeout_s)
        finished = False
        try:
            while True:
                item = await self._next(stream)
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    async def _next(self, stream: asyncio.Queue[Any]) -> Any:
        while True:
            try:
                return await asyncio.wait_for(stream.get(), _POLL_S)
            except asyncio.TimeoutError:
                if not self._thread.is_alive():
                    raise EngineDeadError("the engine loop stopped") from None

    def abort(self, request_id: str) -> None:
        self._post(_Abort(request_id))

    async def call(self, fn: Any, timeout_s: float = 10.0) -> Any:
        """``fn(engine)`` on the engine thread, between steps."""
        command = _Call(fn)
        self._post(command)
        return await asyncio.wait_for(asyncio.wrap_future(command.result), timeout_s)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopped.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)
        self.engine.executor.shutdown()

    def _post(self, command: _Add | _Abort | _Call) -> None:
        if self._stopped.is_set():
            raise EngineDeadError("the engine is shutting down")
        self._inbox.put(command)

    # ---- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self.engine.has_unfinished_requests():
                # Idle: sleep until a command arrives (shutdown posts None to wake us).
                command = self._inbox.get()
                if command is None:
                    break
                self._handle(command)
            self._drain_inbox()
            if not self._stopped.is_set() and self.engine.has_unfinished_requests():
                self._step()
        self._fail_streams(EngineDeadError("the engine shut down"))

    def _drain_inbox(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if command is None:
                self._stopped.set()
                return
            self._handle(command)

    def _handle(self, command: _Add | _Abort | _Call) -> None:
        if isinstance(command, _Add):
            try:
                self.engine.add_request(command.request_id, command.prompt, command.params,
                                        command.cache_salt)
            except Exception as exc:
                command.accepted.set_exception(exc)
                return
            self._streams[command.request_id] = (command.loop, command.stream)
            command.accepted.set_result(None)
        elif isinstance(command, _Abort):
            self.engine.abort(command.request_id)
        else:
            try:
                command.result.set_result(command.fn(self.engine))
            except Exception as exc:
                command.result.set_exception(exc)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # a bug, not a model failure: fail loudly, free everything
            logger.exception("engine step failed")
            self.engine.dead_reason = f"engine step failed: {exc}"
            outputs = self.engine.fail_all(self.engine.dead_reason)
        for output in outputs:
            target = self._streams.get(output.request_id)
            if target is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            loop, stream = target
            with contextlib.suppress(RuntimeError):  # the caller's loop already closed
                loop.call_soon_threadsafe(stream.put_nowait, output)

    def _fail_streams(self, error: BaseException) -> None:
        for loop, stream in self._streams.values():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stream.put_nowait, error)
        self._streams.clear()
