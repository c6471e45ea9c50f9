"""A rank that dies or hangs fails the step fast, frees every KV block, and a new group
starts afterwards."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import ray

from cluster.executor import RayExecutor, WorkerGroupError
from cluster.options import ClusterOptions
from model.runner_config import RunnerConfig
from model.step import NewRequest, ScheduledSequence, StepInput
from serve import LLM, SamplingParams
from serve.engine.errors import EngineDeadError

pytestmark = pytest.mark.usefixtures("ray_cluster")

NUM_KV_BLOCKS = 64


def tp2_llm(path: Path) -> LLM:
    return LLM(model=str(path), tensor_parallel_size=2, num_kv_blocks=NUM_KV_BLOCKS,
               dtype="float32", device="cpu")


@pytest.mark.parametrize("victim", [1, 0])
def test_killing_a_rank_mid_generation_fails_the_request_fast(tp_checkpoint: Path,
                                                              victim: int) -> None:
    llm = tp2_llm(tp_checkpoint)
    engine = llm.engine
    try:
        long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        engine.add_request("victim", "Tell me a very long story", long)
        engine.add_request("bystander", [1, 415, 5565, 302], long)
        for _ in range(5):
            outputs = engine.step()
            assert not any(o.finished for o in outputs)
        assert engine.stats().num_free_kv_blocks < NUM_KV_BLOCKS

        ray.kill(engine.executor.group.workers[victim])
        started = time.monotonic()
        finished = {}
        while len(finished) < 2 and time.monotonic() - started < 10:
            finished.update((o.request_id, o) for o in engine.step() if o.finished)
        elapsed = time.monotonic() - started

        assert elapsed < 10 and finished.keys() == {"victim", "bystander"}
        for output in finished.values():
            assert output.outputs[0].finish_reason == "error"
            assert output.error is not None and "retry the request" in output.error
            assert "tensor-parallel worker failed" in output.error
        assert engine.requests == {}
        assert engine.stats().num_free_kv_blocks == NUM_KV_BLOCKS
        assert engine.dead_reason is not None
        with pytest.raises(EngineDeadError):
            engine.add_request("late", "hello")
        with pytest.raises(WorkerGroupError, match="retry"):
            engine.executor.check_health()
    finally:
        llm.shutdown()
    # Shutdown released the placement group: a new group gets the CPUs and serves.
    again = tp2_llm(tp_checkpoint)
    try:
        [output] = again.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4))
        assert output.error is None and len(output.outputs[0].token_ids) == 4
    finally:
        again.shutdown()


def test_a_hung_rank_fails_the_step_after_the_step_timeout(tp_checkpoint: Path) -> None:
    config = RunnerConfig(model=str(tp_checkpoint), num_kv_blocks=8, dtype="float32",
                          device="cpu")
    executor = RayExecutor(config, 2, ClusterOptions(step_timeout_s=2.0))
    worker = executor.group.workers[1]
    pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
    params = SamplingParams(temperature=0.0)
    step = StepInput([ScheduledSequence("r", [1, 2, 3], 0, [0], True)],
                     [NewRequest("r", [1, 2, 3], params)])
    try:
        os.kill(pid, signal.SIGSTOP)  # alive, socket open, never answers
        started = time.monotonic()
        with pytest.raises(WorkerGroupError, match="did not answer within 2s"):
            executor.execute(step)
        assert time.monotonic() - started < 5
        with pytest.raises(WorkerGroupError, match="retry"):  # stays dead, without waiting
            executor.execute(step)
    finally:
        executor.shutdown()
        os.kill(pid, signal.SIGKILL)  # a stopped process cannot act on Ray's kill request


def test_a_rank_that_fails_its_step_fails_it_with_the_ranks_error(tp_checkpoint: Path) -> None:
    config = RunnerConfig(model=str(tp_checkpoint), num_kv_blocks=8, dtype="float32",
                          device="cpu")
    executor = RayExecutor(config, 2)
    try:
        # 40 tokens do not fit a one-block table: every rank rejects the step.
        bad = StepInput([ScheduledSequence("r", list(range(3, 43)), 0, [0], True)],
                        [NewRequest("r", [1], SamplingParams())])
        with pytest.raises(WorkerGroupError, match="rank [01]: ValueError: request r: block table"):
            executor.execute(bad)
    finally:
        executor.shutdown()

