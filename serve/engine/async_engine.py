"""The asyncio front of the engine: one background thread steps the engine, coroutines stream.

The engine itself is single-threaded. Coroutines never touch it directly: they post
commands (add, abort, call) to an inbox that the engine thread drains before each step,
and they receive outputs on their own asyncio queue (``generate``) or in a callback
(``start``). Leaving a stream early (cancel, break, client gone) aborts the request, which
returns its KV blocks on the next engine iteration.

The loop survives its callers. Every hand-off tolerates a caller that timed out or was
cancelled meanwhile (its future is then skipped, and an add that nobody waits for any more
is aborted), and an exception in a command is logged and survived: only a failed step marks
the engine dead. Stats for metrics, routing and autoscaling are published by the loop into
a snapshot that readers take without waiting, so a long step delays nothing but itself.
The loop's heartbeat (when its current step started) tells the health check whether it is
serving.

The model runs on a step thread of its own (``ThreadedStepRunner``): the loop schedules
step N+1 and chains it behind step N before N has answered (``LLMEngine.advance``), then
collects and renders step N (detokenization, stop strings, outputs) and hands the outputs
over while the model computes N+1. Outputs reach each
caller's event loop in one hand-off per step, and a caller that fell behind reads every
output waiting for it as one (``coalesce``), so a slow consumer costs fewer, fuller items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.sampling_params import SamplingParams
from serve.engine.engine import Launched, LLMEngine
from serve.engine.errors import EngineDeadError, InvalidRequestError
from serve.engine.request import RequestOutput, coalesce
from serve.engine.stats import EngineStats
from serve.engine.step_runner import ThreadedStepRunner

logger = logging.getLogger(__name__)

# How long a waiting coroutine sleeps between liveness checks of the engine thread.
_POLL_S = 1.0
# A step running longer than this means the loop is stalled (a hung kernel or rank): the
# health check fails and Serve replaces the replica. Far above any real step, a 2048-token
# prefill chunk on a slow CPU included.
DEFAULT_STALL_TIMEOUT_S = 600.0


@dataclass
class _Add:
    request_id: str
    prompt: str | Sequence[int]
    params: SamplingParams
    cache_salt: str | None
    loop: asyncio.AbstractEventLoop
    # Called on ``loop`` with each output, or with the error that ends the request.
    put: Callable[[RequestOutput | BaseException], None]
    accepted: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Run a function on the engine thread (between steps) and hand back its result."""

    fn: Any
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


def _settle(future: concurrent.futures.Future[Any], fn: Any) -> None:
    """Run ``fn()`` for a caller that may have given up: a cancelled future is skipped, and
    its result or exception is set at most once."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


@dataclass
class Heartbeat:
    """What the loop is doing: ``step_started`` is set while a step runs."""

    step_started: float | None = None

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the current step has run (0 when none runs)."""
        if self.step_started is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.step_started


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine,
                 stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> None:
        self.engine = engine
        self.stall_timeout_s = stall_timeout_s
        self._inbox: queue.Queue[_Add | _Abort | _Call | None] = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, Callable[[Any], None]]] = {}
        self._ids = itertools.count()
        self._stopped = threading.Event()
        self.heartbeat = Heartbeat()
        self.stats: EngineStats = engine.stats()
        engine.step_runner = ThreadedStepRunner(engine.executor)
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    # ---- public API (any thread / event loop) ---------------------------------------

    @property
    def dead_reason(self) -> str | None:
        """Why the engine cannot serve, or None while it can."""
        if self.engine.dead_reason is not None:
            return self.engine.dead_reason
        if not self._thread.is_alive():
            return "the engine loop stopped"
        stalled = self.heartbeat.stalled_for()
        if stalled > self.stall_timeout_s:
            return (f"the engine loop is stalled: one step has run for {stalled:.0f}s "
                    f"(bound {self.stall_timeout_s:.0f}s)")
        return None

    @property
    def is_healthy(self) -> bool:
        return self.dead_reason is None

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                       request_id: str | None = None, cache_salt: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """``start`` read as a stream: outputs until the request finishes; raises the
        engine's validation errors (ValueError, QueueFullError, EngineDeadError) before the
        first output. ``start`` is the one consumer API; this is its iterator form."""
        request_id = request_id or f"req-{next(self._ids)}"
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        finished = False
        try:
            await self.start(prompt, params, request_id, cache_salt, stream.put_nowait)
            while True:
                # Everything waiting is read at once; only an empty queue is waited on. The
                # engine thread ends every stream when it stops (``_run``), so this wait is
                # bounded by the loop's life.
                items = [stream.get_nowait() if not stream.empty() else await stream.get()]
                while not stream.empty():
                    items.append(stream.get_nowait())
                outputs = [item for item in items if not isinstance(item, BaseException)]
                if outputs:
                    output = coalesce(outputs)
                    finished = output.finished
                    yield output
                    if finished:
                        return
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
        finally:
            if not finished:
                # Also after a refused add: the abort of an unknown id does nothing, and
                # the inbox is FIFO, so an add the loop has not reached yet is undone.
                with contextlib.suppress(EngineDeadError):
                    self.abort(request_id)

    async def start(self, prompt: str | Sequence[int], params: SamplingParams | None,
                    request_id: str, cache_salt: str | None,
                    put: Callable[[RequestOutput | BaseException], None]) -> None:
        """Add a request whose outputs the engine hands to ``put``, on this event loop, one
        call per step it has new output in (or once with the error that ends it); raises
        the engine's validation errors. The caller aborts it if it stops listening early."""
        if params is not None and params.structured_outputs is not None:
            # Compiled here, off the engine thread, so a new grammar (or the first one's
            # library import) never stalls the running requests; add_request then finds it
            # in the cache, and reports a grammar that does not compile.
            with contextlib.suppress(InvalidRequestError):
                await asyncio.to_thread(self.engine.constraints.compile,
                                        params.structured_outputs)
        command = _Add(request_id, prompt, params or SamplingParams(), cache_salt,
                       asyncio.get_running_loop(), put)
        self._post(command)
        await self._wait(asyncio.wrap_future(command.accepted))

    async def _wait(self, awaitable: Any) -> Any:
        """Await while the loop is alive: the bound is the loop's health, not a fixed time,
        so a long step (a long prompt on a slow device) delays without failing. A step past
        the stall bound fails the health check instead, and Serve replaces the replica."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_POLL_S)
                if done:
                    return task.result()
                if self.engine.dead_reason is not None or not self._thread.is_alive():
                    raise EngineDeadError(self.engine.dead_reason or "the engine loop stopped")
        finally:
            task.cancel()

    def abort(self, request_id: str) -> None:
        self._post(_Abort(request_id))

    async def call(self, fn: Any, timeout_s: float = 10.0) -> Any:
        """``fn(engine)`` on the engine thread, between steps. A timeout leaves the loop
        unharmed: the call is skipped if the loop has not reached it yet."""
        command = _Call(fn)
        self._post(command)
        return await asyncio.wait_for(asyncio.wrap_future(command.result), timeout_s)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)
        self.engine.step_runner.shutdown()
        self.engine.executor.shutdown()

    def _post(self, command: _Add | _Abort | _Call) -> None:
        if self._stopped.is_set():
            raise EngineDeadError("the engine is shutting down")
        self._inbox.put(command)

    # ---- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        launched: Launched | None = None
        try:
            while not self._stopped.is_set():
                if launched is None and not self.engine.has_unfinished_requests():
                    self._publish()
                    # Idle: sleep until a command arrives (shutdown posts None to wake us).
                    command = self._inbox.get()
                    if command is None:
                        break
                    self._handle(command)
                launched = self._iterate(launched)
        finally:
            # However the loop ends, no caller is left waiting for an output.
            self._fail_streams(EngineDeadError(self.engine.dead_reason
                                               or "the engine shut down"))

    def _iterate(self, launched: Launched | None) -> Launched | None:
        """Admit commands, launch step N+1 behind step N, collect N, and render it while N+1 runs."""
        engine = self.engine

        def between() -> None:
            self._drain_inbox()
            # From here until the next collect, the heartbeat times the launched step.
            self.heartbeat.step_started = None if self._stopped.is_set() else time.monotonic()

        try:
            following, outputs = engine.advance(launched, between)
        except Exception as exc:  # a bug in the engine: fail loudly, free everything
            logger.exception("engine step failed")
            engine.dead_reason = f"engine step failed: {type(exc).__name__}"
            following, outputs = None, engine.fail_all(engine.dead_reason)
        if following is None:
            self.heartbeat.step_started = None
        self._publish()
        self._deliver(outputs)
        return following

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand the outputs to their callers: one call per event loop, not per output."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Any], None], Any]]] = {}
        streams = self._streams
        for output in outputs:
            target = streams.get(output.request_id)
            if target is None:
                continue
            if output.finished:
                del streams[output.request_id]
            loop, put = target
            batches.setdefault(loop, []).append((put, output))
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop already closed
                loop.call_soon_threadsafe(_put_all, batch)

    def _publish(self) -> None:
        try:
            self.stats = self.engine.stats()
        except Exception:  # stats are advisory; never let them stop the loop
            logger.exception("engine stats failed")

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
        try:
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Abort):
                self.engine.abort(command.request_id)
            else:
                _settle(command.result, lambda: command.fn(self.engine))
        except Exception:  # a bug in one command must not take the loop down
            logger.exception("engine command %s failed", type(command).__name__)

    def _add(self, command: _Add) -> None:
        def add() -> None:
            self.engine.add_request(command.request_id, command.prompt, command.params,
                                    command.cache_salt)
            self._streams[command.request_id] = (command.loop, command.put)

        # A caller that already gave up is skipped: no request is added for it.
        _settle(command.accepted, add)

    def _fail_streams(self, error: BaseException) -> None:
        for loop, put in self._streams.values():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, [(put, error)])
        self._streams.clear()


def _put_all(batch: list[tuple[Callable[[Any], None], Any]]) -> None:
    for put, item in batch:
        try:
            put(item)
        except Exception:  # one caller's failure must not keep the others' outputs
            logger.exception("handing an output to its caller failed")
