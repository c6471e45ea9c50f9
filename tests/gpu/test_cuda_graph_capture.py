"""Decode steps replayed from captured CUDA graphs give the logits of the eager path and
never write the padding rows' K/V. Capture needs a CUDA device; the same comparison through
the uncaptured static path runs on CPU in tests/model/test_cuda_graph.py, whose helpers
(runner construction, the step sequence, the checks) this file shares.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.cuda_graph import CudaGraphOptions
from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config
from tests.model.test_cuda_graph import make_runner, run_and_compare

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-graphs")
    save_hf_checkpoint(directory, tiny_mistral_config())
    return directory


def test_captured_graphs_match_eager(checkpoint: Path) -> None:
    reference = make_runner(checkpoint, "torch", None)
    subject = make_runner(checkpoint, "triton", CudaGraphOptions(max_batch_size=8))
    graphs = subject.decode_graphs
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4, 8]
    # Warm-up and capture ran with every row padding: the cache is still all zeros.
    assert all(cache.abs().max().item() == 0 for cache in subject.kv_caches)
    run_and_compare(reference, subject)
