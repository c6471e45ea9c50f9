"""A CPU model is built on a thread that has exited by the time the caller gets it, so the
thread that steps it is the process's only OpenMP master (model/build_thread.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from model.build_thread import build_on_exiting_thread
from model.factory import build_runner
from model.runner_config import RunnerConfig


def test_the_build_runs_on_a_thread_that_is_gone_when_it_returns() -> None:
    seen: list[threading.Thread] = []

    def build() -> int:
        seen.append(threading.current_thread())
        return 42

    assert build_on_exiting_thread(build) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_a_failed_build_raises_in_the_caller() -> None:
    def build() -> None:
        raise ValueError("no such checkpoint")

    with pytest.raises(ValueError, match="no such checkpoint"):
        build_on_exiting_thread(build)


def test_a_cpu_runner_built_elsewhere_keeps_its_thread_count(tiny_checkpoint: Path) -> None:
    """torch's thread count is process-wide: the step thread computes with what the config
    asked for although the build set it on another thread."""
    before = torch.get_num_threads()
    try:
        runner = build_runner(RunnerConfig(model=str(tiny_checkpoint), device="cpu",
                                           num_kv_blocks=8, cpu_threads=1))
        counts: list[int] = []
        worker = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert counts == [1]
        assert runner.num_blocks == 8
    finally:
        torch.set_num_threads(before)
