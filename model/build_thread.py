"""Build a CPU model on a thread that exits when the build is done.

libgomp, the OpenMP runtime under PyTorch's CPU kernels, oneDNN's linears and the paged
attention kernel, keeps a pool of workers for every thread that has started a parallel
region. When it manages more threads than the machine has cores, it stops spin-waiting
between regions: each worker sleeps after every region and the next one wakes it with a
futex. A decode step is hundreds of short regions, so that wake-up is paid hundreds of
times per token. That is what happens when a model is built on one thread and stepped on
another (the engine's step thread, a tensor-parallel rank's channel thread): two pools of
two threads on two cores. Measured on the 2-core host, SmolLM2 float32 at batch 1 decoded
at 71-90 ms per token on the step thread, and at 44-50 ms, as fast as building and
stepping on one thread, once the building thread had exited, since its pool goes with it.

So the build runs here and the thread that steps is the process's only OpenMP master. On
GPU the kernels do not use OpenMP, and CUDA's current device is per thread: it builds in
place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def build_on_exiting_thread(build: Callable[[], T]) -> T:
    """``build()`` on a new thread, joined before returning its result (or raising its
    exception): the caller waits as if it ran inline."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(build())
        except BaseException as exc:  # handed to the caller, which raises it as its own
            error.append(exc)

    thread = threading.Thread(target=run, name="model-build")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
