"""Scheduling a step before the one in flight has answered: the step runner fills in the
pending tokens, and the chained loop makes exactly the tokens of the loop in series."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from model.sampling_params import SamplingParams
from model.step import SampledToken, ScheduledSequence, StepInput, StepOutput
from serve.engine.engine import LLMEngine
from serve.engine.scheduler import SchedulerOutput
from serve.engine.step_runner import PENDING_TOKEN, ThreadedStepRunner, fill_pending
from serve.llm import LLM
from tests.engine.helpers import assert_all_blocks_free


class GatedExecutor:
    """Records each step's inputs; the first step waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inputs: list[list[list[int]]] = []
        self.fail_first = False

    def execute(self, step: StepInput) -> StepOutput:
        self.inputs.append([list(seq.token_ids) for seq in step.sequences])
        if len(self.inputs) == 1:
            assert self.release.wait(5)
            if self.fail_first:
                raise RuntimeError("device lost")
        return StepOutput([SampledToken(seq.request_id, 100 * len(self.inputs) + i)
                           for i, seq in enumerate(step.sequences) if seq.sample])


def decode(request_id: str, token: int, position: int) -> ScheduledSequence:
    return ScheduledSequence(request_id, [token], position, [0], True)


def test_a_chained_step_runs_with_the_tokens_the_step_before_sampled() -> None:
    executor = GatedExecutor()
    runner = ThreadedStepRunner(executor)  # type: ignore[arg-type]
    try:
        first = runner.submit(StepInput([decode("a", 7, 3), decode("b", 8, 5)]))
        chained = [decode("a", PENDING_TOKEN, 4), decode("b", PENDING_TOKEN, 6)]
        prefill = ScheduledSequence("c", [1, 2, 3], 0, [1], True)
        second = runner.submit(StepInput([chained[1], prefill, chained[0]]), chained)
        # Submitted while the first step still runs: nothing waited for it to start.
        assert not first.done()
        executor.release.set()
        assert [t.token_id for t in first.result(5).sampled] == [100, 101]
        second.result(5)
        assert executor.inputs[1] == [[101], [1, 2, 3], [100]]
    finally:
        runner.shutdown()


def test_a_step_chained_behind_a_failed_one_fails() -> None:
    executor = GatedExecutor()
    executor.fail_first = True
    runner = ThreadedStepRunner(executor)  # type: ignore[arg-type]
    try:
        first = runner.submit(StepInput([decode("a", 7, 3)]))
        chained = [decode("a", PENDING_TOKEN, 4)]
        second = runner.submit(StepInput(chained), chained)
        executor.release.set()
        with pytest.raises(RuntimeError, match="device lost"):
            first.result(5)
        with pytest.raises(RuntimeError, match="inputs are unknown"):
            second.result(5)
        assert len(executor.inputs) == 1  # the chained step never reached the model
    finally:
        runner.shutdown()


def test_fill_pending_needs_the_step_before() -> None:
    seq = decode("a", PENDING_TOKEN, 4)
    fill_pending([seq], StepOutput([SampledToken("a", 42)]))
    assert seq.token_ids == [42]
    with pytest.raises(RuntimeError, match="step before failed"):
        fill_pending([decode("a", PENDING_TOKEN, 5)], None)


def workload(seed: int) -> list[tuple[list[int], SamplingParams]]:
    """Prompts long enough for chunked prefill and for blocks to fill, sampled and greedy,
    lengths that end on different steps, and stop tokens that end some requests early (the
    random model's tokens are noise, so a large stop set is hit within a few steps)."""
    rng = random.Random(seed)
    stop_ids = rng.sample(range(3, 32000), 1500)
    shared = [rng.randrange(3, 32000) for _ in range(40)]
    items = []
    for i in range(12):
        prompt = [rng.randrange(3, 32000) for _ in range(rng.choice([5, 17, 40, 90]))]
        if i % 2:
            prompt = shared + prompt
        params = SamplingParams(
            temperature=0.0 if i % 3 == 0 else 1.0, seed=1000 + i,
            max_tokens=rng.randrange(3, 60), ignore_eos=True,
            stop_token_ids=stop_ids if i % 4 == 1 else None)
        items.append((prompt, params))
    return items


def run_series(engine: LLMEngine, items: list[tuple[list[int], SamplingParams]]
               ) -> dict[str, tuple[list[int], str | None]]:
    for i, (prompt, params) in enumerate(items):
        engine.add_request(f"r{i}", prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (out.outputs[0].token_ids, out.outputs[0].finish_reason)
    return done


def run_chained(engine: LLMEngine, items: list[tuple[list[int], SamplingParams]]
                ) -> tuple[dict[str, tuple[list[int], str | None]], dict[str, int]]:
    """The loop ``AsyncLLMEngine`` runs; also counts the steps chained behind another and
    the passes scheduling ahead found short of blocks (it would have preempted)."""
    engine.step_runner = ThreadedStepRunner(engine.executor)
    counts = {"chained": 0, "short": 0}
    submit, schedule = engine.step_runner.submit, engine.scheduler.schedule

    def counting_submit(step: StepInput, pending: list[ScheduledSequence] | None = None):
        counts["chained"] += bool(pending)
        return submit(step, pending)

    def counting_schedule(ahead: bool = False) -> SchedulerOutput:
        out = schedule(ahead)
        counts["short"] += out.incomplete
        return out

    engine.step_runner.submit = counting_submit  # type: ignore[method-assign]
    engine.scheduler.schedule = counting_schedule  # type: ignore[method-assign]
    for i, (prompt, params) in enumerate(items):
        engine.add_request(f"r{i}", prompt, params)
    done = {}
    launched = None
    try:
        while True:
            launched, outputs = engine.advance(launched)
            for out in outputs:
                if out.finished:
                    done[out.request_id] = (out.outputs[0].token_ids,
                                            out.outputs[0].finish_reason)
            if launched is None and not engine.has_unfinished_requests():
                break
    finally:
        engine.step_runner.shutdown()
    return done, counts


@pytest.mark.parametrize("num_kv_blocks", [512, 12])
def test_chained_loop_makes_the_tokens_of_the_loop_in_series(tiny_checkpoint: Path,
                                                             num_kv_blocks: int) -> None:
    """12 blocks of 16 cannot hold the batch: requests are preempted, blocks freed by
    finished requests are reused while a step that still writes them is in flight, and
    scheduling ahead, which never preempts, runs short of blocks. Half the prompts share a
    prefix, so a block registered in the cache without its KV would change a later
    request's tokens."""
    items = workload(seed=num_kv_blocks)
    args = dict(num_kv_blocks=num_kv_blocks, max_num_batched_tokens=64, max_num_seqs=8)
    with LLM(str(tiny_checkpoint), **args) as series_llm:
        expected = run_series(series_llm.engine, items)
        assert_all_blocks_free(series_llm.engine)
    with LLM(str(tiny_checkpoint), **args) as chained_llm:
        got, counts = run_chained(chained_llm.engine, items)
        assert_all_blocks_free(chained_llm.engine)
    assert got == expected
    assert counts["chained"] > 30  # most steps really were scheduled ahead
    assert (counts["short"] > 0) == (num_kv_blocks == 12)
    assert {reason for _, reason in expected.values()} == {"length", "stop"}
