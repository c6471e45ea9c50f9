"""An offline ``LLM`` at tp > 1 gives back its placement group and workers without waiting
for the garbage collector: ``shutdown()`` (idempotent), a ``with`` block, or dropping the
last reference. The session cluster has exactly 4 CPUs, so a tp=4 model that kept its
group would leave a second one waiting for CPUs until the start timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.options import START_TIMEOUT_ENV
from model.sampling_params import SamplingParams
from serve import LLM

pytestmark = pytest.mark.usefixtures("ray_cluster")
GREEDY = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)


def tp4(checkpoint: Path) -> LLM:
    return LLM(str(checkpoint), tensor_parallel_size=4, num_kv_blocks=16, dtype="float32",
               device="cpu")


@pytest.fixture(autouse=True)
def short_start_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A group that cannot get its CPUs fails in 20 s instead of the default 300 s.
    monkeypatch.setenv(START_TIMEOUT_ENV, "20")


def test_dropping_the_last_reference_releases_the_group(tp_checkpoint: Path) -> None:
    llm = tp4(tp_checkpoint)
    assert len(llm.generate([5, 6, 7], GREEDY)[0].outputs[0].token_ids) == 3
    del llm
    second = tp4(tp_checkpoint)  # would wait for the CPUs the first one still held
    second.shutdown()


def test_a_with_block_and_a_second_shutdown(tp_checkpoint: Path) -> None:
    with tp4(tp_checkpoint) as llm:
        llm.generate([5, 6, 7], GREEDY)
    llm.shutdown()  # already released: does nothing
    with tp4(tp_checkpoint) as again:
        assert again.generate([5, 6, 7], GREEDY)[0].outputs[0].finish_reason == "length"
