"""CPU time of the service's own processes over a benchmark phase, and how long their
busiest thread waited for a core.

    with ProcessCpu(("LLMServer", "Ingress", "ProxyActor")) as cpu:
        run_load()
    cpu.figures()  # {"LLMServer": {"cpu_s": 4.1, "busiest_thread_cpu_s": 3.0,
                   #                "busiest_thread_runqueue_s": 1.5}, ...}

A process is matched by a name in its command line (Ray names actor processes after their
class). The run-queue wait comes from Linux's /proc/<pid>/task/<tid>/schedstat: time the
thread was ready to run but had no core, which on a small machine shows the engine's step
thread losing its core to the rest of the path. Elsewhere it is left out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psutil


def _threads(pid: int) -> dict[str, tuple[float, float]]:
    """Thread id -> (seconds on a core, seconds waiting for one)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
            threads[task.name] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return threads


class ProcessCpu:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._start: dict[str, tuple[psutil.Process, float, dict[str, tuple[float, float]]]] = {}
        self._figures: dict[str, dict[str, float]] = {}

    def _processes(self) -> dict[str, psutil.Process]:
        found = {}
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            for name in self.names:
                if name in line and name not in found:
                    found[name] = process
        return found

    def __enter__(self) -> ProcessCpu:
        for name, process in self._processes().items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                self._start[name] = (process, times.user + times.system, _threads(process.pid))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, (process, cpu_before, threads_before) in self._start.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                figures = {"cpu_s": round(times.user + times.system - cpu_before, 2)}
                deltas = [(run - threads_before.get(tid, (0.0, 0.0))[0],
                           wait - threads_before.get(tid, (0.0, 0.0))[1])
                          for tid, (run, wait) in _threads(process.pid).items()]
                if deltas:
                    run, wait = max(deltas)
                    figures["busiest_thread_cpu_s"] = round(run, 2)
                    figures["busiest_thread_runqueue_s"] = round(wait, 2)
                self._figures[name] = figures

    def figures(self) -> dict[str, dict[str, float]]:
        return dict(self._figures)
