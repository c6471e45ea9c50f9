"""Decode steps through the padded static buffers give the logits of the eager path and
never write the padding rows' K/V.

Here the static path runs uncaptured (``capture=False``) with the Triton backend (under
Triton's interpreter without a GPU), the backend that supports static shapes; the torch
backend's eager path is the oracle. tests/conftest.py sets TRITON_INTERPRET before anything
imports triton. The same comparison through captured CUDA graphs needs a GPU:
tests/gpu/test_cuda_graph_capture.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model.cuda_graph import (  # noqa: E402
    CudaGraphOptions,
    capture_sizes,
    pack_decode,
    padded_batch_size,
    unavailable_reason,
)
from model.factory import build_model  # noqa: E402
from model.kv_cache import KVCacheSpec, allocate_kv_cache  # noqa: E402
from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config  # noqa: E402
from model.runner import ModelRunner  # noqa: E402
from model.step import ScheduledSequence, StepInput  # noqa: E402
from serve.engine.config import EngineConfig  # noqa: E402
from serve.engine.executor import LocalExecutor  # noqa: E402

BLOCK_SIZE = 16
NUM_BLOCKS = 10
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Block 0 belongs to no sequence: padding rows' block tables point at it, so a backend that
# wrote a padding row's K/V would most likely write there.
TABLES = {"a": [4, 2], "b": [7, 1], "c": [3, 8, 6]}
# Decode positions 15, 16, 40: the last slot of a block, the first of the next, and deeper.
PROMPT_LENS = {"a": 16, "b": 17, "c": 41}


def decode(request_id: str, token: int, position: int, sample: bool = True
           ) -> ScheduledSequence:
    return ScheduledSequence(request_id, [token], position, TABLES[request_id], sample)


# --- sizes, buckets, packing, configuration: pure logic --------------------------------------

def test_capture_sizes() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    sizes = capture_sizes(256)
    assert sizes[:9] == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert sizes[-4:] == [160, 192, 224, 256]


def test_batch_pads_up_to_the_next_size_and_too_large_runs_eagerly() -> None:
    sizes = capture_sizes(32)
    assert padded_batch_size(5, sizes) == 8
    assert padded_batch_size(8, sizes) == 8
    assert padded_batch_size(1, sizes) == 1
    assert padded_batch_size(25, sizes) == 32
    assert padded_batch_size(33, sizes) is None


def test_pack_decode_pads_rows() -> None:
    step = StepInput([ScheduledSequence("x", [11], 5, [3, 8], True),
                      ScheduledSequence("y", [12], 0, [9], True)])
    values = pack_decode(step, block_size=4, batch_size=4)
    assert values.input_ids.tolist() == [11, 12, 0, 0]
    assert values.positions.tolist() == [5, 0, 0, 0]
    assert values.slot_mapping.tolist() == [8 * 4 + 1, 9 * 4, -1, -1]
    assert values.seq_lens.tolist() == [6, 1, 0, 0]
    assert values.block_tables.tolist() == [[3, 8], [9, 0], [0, 0], [0, 0]]
    with pytest.raises(ValueError, match="block table of 1 blocks cannot hold 5 tokens"):
        pack_decode(StepInput([ScheduledSequence("z", [1], 4, [2], True)]), 4, 1)


def test_engine_config_switch_validation() -> None:
    assert EngineConfig(model="m").cuda_graphs is True
    assert EngineConfig(model="m").cuda_graph_batch_limit == 128  # max_num_seqs
    assert EngineConfig(model="m", max_num_seqs=1000).cuda_graph_batch_limit == 256
    assert EngineConfig(model="m", cuda_graph_max_batch_size=24).cuda_graph_batch_limit == 24
    with pytest.raises(ValueError, match=r"cuda_graphs\s+Input should be a valid boolean"):
        EngineConfig(model="m", cuda_graphs="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cuda_graph_max_batch_size\s+Input should be greater than or equal to 1"):
        EngineConfig(model="m", cuda_graph_max_batch_size=0)
    with pytest.raises(ValueError, match=r"exceeds max_num_seqs \(8\)"):
        EngineConfig(model="m", max_num_seqs=8, cuda_graph_max_batch_size=16)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        CudaGraphOptions(max_batch_size=0)


def test_why_graphs_are_off() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert unavailable_reason(CudaGraphOptions(), cuda, True, "triton") is None
    assert "cuda_graphs=False" in unavailable_reason(
        CudaGraphOptions(enabled=False), cuda, True, "triton")
    assert "not CUDA" in unavailable_reason(CudaGraphOptions(), cpu, True, "triton")
    assert "'torch' cannot run padded static-shape" in unavailable_reason(
        CudaGraphOptions(), cuda, False, "torch")
    # Without capture the static path runs anywhere the backend supports it.
    assert unavailable_reason(CudaGraphOptions(capture=False), cpu, True, "triton") is None


# --- the static path against the eager one ---------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-graphs")
    save_hf_checkpoint(directory, tiny_mistral_config())
    return directory


def make_runner(checkpoint: Path, backend: str, options: CudaGraphOptions | None
                ) -> ModelRunner:
    model = build_model(checkpoint, dtype="float32", device=DEVICE, attention_backend=backend)
    spec = KVCacheSpec.for_model(model.config, model.ctx, BLOCK_SIZE, torch.float32)
    caches = allocate_kv_cache(spec, NUM_BLOCKS, DEVICE)
    return ModelRunner(model, caches, BLOCK_SIZE, DEVICE, options)


def changed_slots(before: list[torch.Tensor], after: list[torch.Tensor]) -> set[int]:
    """Cache slots (block * block_size + offset) whose K or V differs in any layer."""
    changed: set[int] = set()
    for old, new in zip(before, after, strict=True):
        differs = (old != new).flatten(3).any(-1).any(0)  # [num_blocks, block_size]
        changed |= set(differs.flatten().nonzero().flatten().tolist())
    return changed


def run_and_compare(reference: ModelRunner, subject: ModelRunner) -> None:
    gen = torch.Generator().manual_seed(5)
    prompts = {name: torch.randint(3, 320, (n,), generator=gen).tolist()
               for name, n in PROMPT_LENS.items()}
    prefill = StepInput([ScheduledSequence(name, p[:-1], 0, TABLES[name], False)
                         for name, p in prompts.items()])
    for runner in (reference, subject):
        assert runner.decode_graphs is None or runner.decode_graphs.padded_size(prefill) is None
        runner.compute_logits(prefill)

    steps = [
        # 3 sequences padded to 4: positions 15 | 16 | 40 straddle block boundaries.
        [decode(name, p[-1], len(p) - 1) for name, p in prompts.items()],
        # Order changed (rows hold other tables now) and one row that does not sample.
        [decode("c", 17, 41), decode("a", 18, 16, sample=False)],
        [decode("b", 19, 17)],
    ]
    graphs = subject.decode_graphs
    assert graphs is not None
    for sequences, size in zip(steps, (4, 2, 1), strict=True):
        step = StepInput(sequences)
        assert graphs.padded_size(step) == size
        before = [cache.clone() for cache in subject.kv_caches]
        expected, expected_ids = reference.compute_logits(step)
        actual, actual_ids = subject.compute_logits(step)
        assert actual_ids == expected_ids
        assert (actual - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
        # Only the real rows' slots were written: padding rows (slot -1) wrote nothing.
        written = {TABLES[s.request_id][s.num_computed_tokens // BLOCK_SIZE] * BLOCK_SIZE
                   + s.num_computed_tokens % BLOCK_SIZE for s in sequences}
        assert changed_slots(before, subject.kv_caches) == written
        # The step really went through the static buffers, padding included.
        lens = [s.num_computed_tokens + 1 for s in sequences] + [0] * (size - len(sequences))
        assert graphs.buffers.seq_lens[:size].tolist() == lens
    for ref_cache, cache in zip(reference.kv_caches, subject.kv_caches, strict=True):
        torch.testing.assert_close(cache, ref_cache, rtol=1e-5, atol=1e-5)
    assert all(cache[:, 0].abs().max().item() == 0 for cache in subject.kv_caches)


def test_static_path_matches_eager(checkpoint: Path) -> None:
    reference = make_runner(checkpoint, "torch", None)
    subject = make_runner(checkpoint, "triton",
                          CudaGraphOptions(max_batch_size=8, capture=False))
    assert subject.decode_graphs is not None and not subject.decode_graphs.graphs
    run_and_compare(reference, subject)


def test_switch_off_runs_eagerly(checkpoint: Path) -> None:
    runner = make_runner(checkpoint, "triton", CudaGraphOptions(enabled=False))
    assert runner.decode_graphs is None
    # The torch backend reads host lists, so it never gets the static path.
    runner = make_runner(checkpoint, "torch", CudaGraphOptions(capture=False))
    assert runner.decode_graphs is None


def test_executor_passes_the_switch(checkpoint: Path, caplog: pytest.LogCaptureFixture
                                    ) -> None:
    config = EngineConfig(model=str(checkpoint), device="cpu", attention_backend="torch",
                          num_kv_blocks=4, dtype="float32")
    with caplog.at_level(logging.INFO, logger="model.cuda_graph"):
        executor = LocalExecutor(config.runner_config())
    assert executor.runner.decode_graphs is None
    assert "decode CUDA graphs off: the device is cpu" in caplog.text
