"""Where a step's model work runs: inline, or on a thread of its own so that the engine's
host work for one step overlaps the model's work on the next.

The thread runs one step at a time, in submission order. The model's work releases the GIL
(device waits, torch kernels, the tensor-parallel channel), so the engine thread meanwhile
turns the previous step's tokens into text and outputs.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Protocol

from model.step import StepInput, StepOutput
from serve.engine.executor import Executor

# How long submit waits for the step thread to pick a step up (it normally takes tens of
# microseconds; the bound only keeps a stuck thread from stalling the engine loop).
_START_WAIT_S = 0.05


class StepRunner(Protocol):
    def submit(self, step: StepInput) -> concurrent.futures.Future[StepOutput]: ...

    def shutdown(self) -> None: ...


class InlineStepRunner:
    """Runs the step in the caller's thread; the future is done on return."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def submit(self, step: StepInput) -> concurrent.futures.Future[StepOutput]:
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        try:
            future.set_result(self.executor.execute(step))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self) -> None:
        pass


class ThreadedStepRunner:
    """Runs steps on one daemon thread, in order. Daemon: a step that never returns (a hung
    device) must not keep the process from exiting; the engine's stall bound reports it."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._started = threading.Event()
        self._queue: queue.SimpleQueue[tuple[StepInput, concurrent.futures.Future[StepOutput]]
                                       | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-step", daemon=True)
        self._thread.start()

    def submit(self, step: StepInput) -> concurrent.futures.Future[StepOutput]:
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the step thread has stopped"))
            return future
        self._started.clear()
        self._queue.put((step, future))
        # Let the step thread take the GIL and start the model's work before this thread
        # goes on to CPU-bound rendering: otherwise it would get the GIL only at the next
        # forced switch (5 ms by default), and the step would start that much later.
        self._started.wait(_START_WAIT_S)
        return future

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            step, future = item
            self._started.set()
            try:
                future.set_result(self.executor.execute(step))
            except BaseException as exc:  # reported to the engine, which fails the step
                future.set_exception(exc)

    def shutdown(self) -> None:
        self._queue.put(None)
