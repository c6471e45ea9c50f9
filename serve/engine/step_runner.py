"""Where a step's model work runs: inline, or on a thread of its own so that the engine's
host work for one step overlaps the model's work on the next.

The thread runs one step at a time, in submission order. The model's work releases the GIL
(device waits, torch kernels, the tensor-parallel channel), so the engine thread meanwhile
turns the previous step's tokens into text and outputs.

Steps can be chained: the engine may submit step N+1 before step N has answered, with
``PENDING_TOKEN`` as the input of every sequence whose token step N is sampling. The thread
fills those in from step N's output just before running N+1, so the model starts the next
step the moment the previous one ends, with no engine work between them::

    step N+1 sequences: [("a", [PENDING_TOKEN]), ("b", [17, 18, 19])]   # b: a prefill chunk
    step N sampled:     a → 4031
    step N+1 runs as:   [("a", [4031]),          ("b", [17, 18, 19])]
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Protocol

from model.step import ScheduledSequence, StepInput, StepOutput
from serve.engine.executor import Executor

# The input of a sequence whose token the step before is still sampling (token ids are >= 0).
PENDING_TOKEN = -1

# How long submit waits for the step thread to pick a step up (it normally takes tens of
# microseconds; the bound only keeps a stuck thread from stalling the engine loop).
_START_WAIT_S = 0.05


class StepRunner(Protocol):
    # Whether steps with PENDING_TOKEN inputs may be submitted before the step before answers.
    chains: bool

    def submit(self, step: StepInput, pending: list[ScheduledSequence] | None = None
               ) -> concurrent.futures.Future[StepOutput]: ...

    def shutdown(self) -> None: ...


class InlineStepRunner:
    """Runs the step in the caller's thread; the future is done on return."""

    chains = False

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def submit(self, step: StepInput, pending: list[ScheduledSequence] | None = None
               ) -> concurrent.futures.Future[StepOutput]:
        if pending:
            raise ValueError("an inline step runner cannot chain steps")
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        try:
            future.set_result(self.executor.execute(step))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self) -> None:
        pass


_Item = tuple[StepInput, list[ScheduledSequence] | None, concurrent.futures.Future[StepOutput]]


class ThreadedStepRunner:
    """Runs steps on one daemon thread, in order. Daemon: a step that never returns (a hung
    device) must not keep the process from exiting; the engine's stall bound reports it."""

    chains = True

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._started = threading.Event()
        self._busy = False
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-step", daemon=True)
        self._thread.start()

    def submit(self, step: StepInput, pending: list[ScheduledSequence] | None = None
               ) -> concurrent.futures.Future[StepOutput]:
        """``pending``: the sequences of ``step`` whose input is ``PENDING_TOKEN``; each gets
        the token the previously submitted step sampled for its request."""
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the step thread has stopped"))
            return future
        busy = self._busy
        self._started.clear()
        self._queue.put((step, pending, future))
        # An idle step thread: let it take the GIL and start the model's work before this
        # thread goes on to CPU-bound rendering, or it would get the GIL only at the next
        # forced switch (5 ms by default). A busy one starts the step when the one before
        # ends, with no help.
        if not busy:
            self._started.wait(_START_WAIT_S)
        return future

    def _run(self) -> None:
        previous: StepOutput | None = None
        while (item := self._queue.get()) is not None:
            step, pending, future = item
            self._busy = True
            self._started.set()
            try:
                if pending:
                    fill_pending(pending, previous)
                previous = None
                previous = self.executor.execute(step)
                future.set_result(previous)
            except BaseException as exc:  # reported to the engine, which fails the step
                future.set_exception(exc)
            self._busy = self._queue.qsize() > 0

    def shutdown(self) -> None:
        self._queue.put(None)


def fill_pending(pending: list[ScheduledSequence], previous: StepOutput | None) -> None:
    """Replace each pending sequence's ``PENDING_TOKEN`` with the token ``previous`` sampled
    for its request. A failed or missing previous step fails this one: its inputs are
    unknown."""
    if previous is None:
        raise RuntimeError("the step before failed, so this step's inputs are unknown")
    sampled = {token.request_id: token.token_id for token in previous.sampled}
    for seq in pending:
        seq.token_ids[-1] = sampled[seq.request_id]
