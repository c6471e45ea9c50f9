"""The flash_attn backend against the torch reference, in bf16 with 256-token blocks.

Runs only where flash-attn and a CUDA device are present.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu

# A module-level skip, not a skipif mark: the imports below need flash-attn itself.
if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
    pytest.skip("the flash_attn backend needs a CUDA device and the flash-attn package",
                allow_module_level=True)

from model.attention.flash_attn_backend import FlashAttnBackend  # noqa: E402
from model.attention.metadata import AttentionMetadata  # noqa: E402
from model.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from model.runner import build_step_tensors  # noqa: E402
from model.step import ScheduledSequence, StepInput  # noqa: E402

DEVICE = torch.device("cuda")
DTYPE = torch.bfloat16
BLOCK_SIZE = 256
NUM_BLOCKS = 24
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 8, 2, 128
SCALE = HEAD_DIM ** -0.5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def metadata(shapes: list[tuple[int, int]], sliding_window: int | None) -> AttentionMetadata:
    """(cached tokens, new tokens) per sequence; block tables deliberately out of order."""
    blocks = list(range(NUM_BLOCKS - 1, 0, -1))  # block 0 is left to padding rows
    sequences = []
    for i, (cached, new) in enumerate(shapes):
        num_blocks = -(-(cached + new) // BLOCK_SIZE)
        table, blocks = blocks[:num_blocks], blocks[num_blocks:]
        sequences.append(ScheduledSequence(str(i), [1] * new, cached, table, True))
    return build_step_tensors(StepInput(sequences), BLOCK_SIZE, sliding_window, DEVICE).meta


def compare(shapes: list[tuple[int, int]], sliding_window: int | None = None) -> None:
    torch.manual_seed(0)
    meta = metadata(shapes, sliding_window)
    num_tokens = meta.num_tokens
    q = torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    k = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    v = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    # Random "earlier" K/V everywhere: each sequence's cached prefix reads it.
    cache = torch.randn(2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE,
                        device=DEVICE)
    expected_cache, actual_cache = cache.clone(), cache.clone()
    expected = TorchAttentionBackend().forward(q, k, v, expected_cache, meta, SCALE)
    actual = FlashAttnBackend().forward(q, k, v, actual_cache, meta, SCALE)
    assert torch.equal(actual_cache, expected_cache)
    assert relative_error(actual, expected) <= 1e-2


def test_decode_across_blocks() -> None:
    compare([(0, 1), (255, 1), (256, 1), (700, 1), (1500, 1)])


def test_mixed_batch() -> None:
    # A fresh prompt, a chunk after a cached prefix crossing a block boundary, decodes.
    compare([(0, 300), (200, 1), (250, 40), (513, 1), (1000, 17)])


def test_prefill_only() -> None:
    compare([(0, 600), (0, 5)])


def test_sliding_window() -> None:
    compare([(600, 1), (30, 1), (400, 200), (0, 700)], sliding_window=300)


def test_static_decode_with_padding_rows() -> None:
    """A padded CUDA-graph batch: padding rows (seq_len 0, slot -1) write no K/V and the
    real rows match the reference."""
    torch.manual_seed(1)
    real = metadata([(100, 1), (256, 1), (900, 1)], None)
    size, width = 5, 8
    tables = torch.zeros(size, width, dtype=torch.int32, device=DEVICE)
    tables[:3, :real.block_tables.shape[1]] = real.block_tables
    pad = torch.tensor([0, 0], device=DEVICE)
    static = AttentionMetadata(
        query_start_loc=torch.arange(size + 1, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.cat([real.seq_lens, pad.int()]),
        block_tables=tables,
        slot_mapping=torch.cat([real.slot_mapping, pad - 1]),
        query_lens_host=[1] * size, seq_lens_host=[width * BLOCK_SIZE] * size,
        block_size=BLOCK_SIZE, static_shapes=True,
    )
    q = torch.randn(size, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    k = torch.randn(size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    v = torch.randn(size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    cache = torch.randn(2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE,
                        device=DEVICE)
    expected_cache, actual_cache = cache.clone(), cache.clone()
    expected = TorchAttentionBackend().forward(q[:3], k[:3], v[:3], expected_cache, real, SCALE)
    actual = FlashAttnBackend().forward(q, k, v, actual_cache, static, SCALE)
    assert torch.equal(actual_cache, expected_cache)  # nothing written for the padding rows
    assert relative_error(actual[:3], expected) <= 1e-2


def test_float32_is_refused_with_a_fix() -> None:
    meta = metadata([(10, 1)], None)
    q = torch.zeros(1, NUM_HEADS, HEAD_DIM, device=DEVICE)
    kv = torch.zeros(1, NUM_KV_HEADS, HEAD_DIM, device=DEVICE)
    cache = torch.zeros(2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device=DEVICE)
    with pytest.raises(ValueError, match="float16 or bfloat16.*dtype='bfloat16'"):
        FlashAttnBackend().forward(q, kv, kv, cache, meta, SCALE)
