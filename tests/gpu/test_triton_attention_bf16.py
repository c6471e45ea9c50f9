"""The bf16 cases of tests/model/test_triton_attention.py: Triton's interpreter cannot do
bf16, so these run the compiled kernels on a CUDA device. Each calls the CPU file's test
itself with ``torch.bfloat16``, so the checks (and the bf16 tolerance there) stay one copy.
"""

from __future__ import annotations

import pytest
import torch

from tests.model import test_triton_attention as cases  # a module: its tests are not re-collected

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="bf16 needs CUDA (Triton's interpreter cannot do bf16)"),
]


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size"), cases.DECODE_SHAPES)
def test_decode_at_block_boundaries_bf16(heads: int, kv_heads: int, head_dim: int,
                                         block_size: int) -> None:
    cases.test_decode_at_block_boundaries(torch.bfloat16, heads, kv_heads, head_dim, block_size)


@pytest.mark.parametrize("window", [None, 24])
def test_mixed_batch_bf16(window: int | None) -> None:
    cases.test_mixed_batch(torch.bfloat16, window)
