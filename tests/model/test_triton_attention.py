"""The Triton attention backend agrees with the PyTorch reference on the paged KV cache.

Without a GPU the kernels run under Triton's interpreter on CPU tensors. ``@triton.jit``
(Triton's own library functions included) picks interpreter or compiler when the module that
uses it is imported, so tests/conftest.py sets TRITON_INTERPRET=1 before anything imports
triton. The interpreter cannot do bf16: those cases are tests/gpu/test_triton_attention_bf16.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

ON_GPU = torch.cuda.is_available()
triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from model.attention import triton_backend as backend_module  # noqa: E402
from model.attention import triton_decode  # noqa: E402
from model.attention.metadata import AttentionMetadata  # noqa: E402
from model.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from tests.model import attention_cases  # noqa: E402
from tests.model.attention_cases import (  # noqa: E402
    SCALE,
    TOLERANCE,
    Case,
    device_tensor,
    make_case,
    model_logits,
    reference,
    relative_error,
)

if not ON_GPU and not isinstance(triton_decode._decode_kernel, InterpretedFunction):
    pytest.fail("triton (or the kernel modules) was imported before TRITON_INTERPRET=1 was "
                "set, so the kernels cannot run on the CPU: set it before that import, or "
                "run this file alone", pytrace=False)

DEVICE = attention_cases.DEVICE


def check(case: Case, backend: Any = None) -> torch.Tensor:
    expected, expected_cache = reference(case)
    cache = case.cache.clone()
    out = (backend or TritonAttentionBackend()).forward(case.q, case.k, case.v, cache,
                                                        case.meta(), SCALE)
    assert out.shape == case.q.shape and out.dtype == case.q.dtype
    assert torch.isfinite(out).all()
    assert torch.equal(cache.float(), expected_cache)  # the step's K/V written, nothing else
    assert relative_error(out, expected) <= TOLERANCE[case.q.dtype]
    return out


def record_splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The split count of every decode launch from now on."""
    seen: list[int] = []
    decode = backend_module.paged_decode

    def spy(*args: Any, **kwargs: Any) -> None:
        seen.append(args[8])
        decode(*args, **kwargs)

    monkeypatch.setattr(backend_module, "paged_decode", spy)
    return seen


class Forbidden(list):  # type: ignore[type-arg]
    """A host list a static-shape forward must not read (its values are stale in a replay)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a static_shapes forward read a host list")

    __iter__ = __len__ = __getitem__ = __bool__ = _refuse  # type: ignore[assignment]


BOUNDARY_LENS = [1, 15, 16, 17, 31, 32, 33, 64, 65, 100]
# (heads, kv_heads, head_dim, block_size); tests/gpu runs the same shapes in bf16.
DECODE_SHAPES = [
    (8, 2, 128, 16),  # Mistral's 4:1 grouping and head size
    (4, 4, 64, 16),  # 1:1, no grouping
    (8, 2, 32, 32),
    (6, 2, 32, 16),  # a group of 3 pads the dot's rows
    (4, 1, 80, 16),  # a head size that is not a power of two
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size"), DECODE_SHAPES)
def test_decode_at_block_boundaries(dtype: torch.dtype, heads: int, kv_heads: int,
                                    head_dim: int, block_size: int) -> None:
    check(make_case([(n - 1, 1) for n in BOUNDARY_LENS], heads, kv_heads, head_dim,
                    block_size, dtype))


@pytest.mark.parametrize("window", [None, 5, 40])
def test_decode_split_k_over_short_contexts(window: int | None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Many splits: the short rows leave most of them empty, and the window skips blocks."""
    splits = record_splits(monkeypatch)
    backend = TritonAttentionBackend(num_sms=256, min_tokens_per_split=2)
    check(make_case([(n - 1, 1) for n in [*BOUNDARY_LENS, 250]], 8, 2, 32, window=window),
          backend)
    assert splits[0] >= 2 if window == 5 else splits[0] >= 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [None, 24])
def test_mixed_batch(dtype: torch.dtype, window: int | None) -> None:
    """Decode rows, chunks on top of cached blocks and fresh prompts in one step."""
    seqs = [(40, 1), (20, 13), (0, 37), (70, 1), (0, 2), (15, 1), (33, 64)]
    check(make_case(seqs, 8, 2, 64, dtype=dtype, window=window, seed=1))


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("window", [None, 1, 9])
def test_prefill_without_grouping(block_size: int, window: int | None) -> None:
    check(make_case([(0, 50), (17, 30), (64, 16)], 4, 4, 32, block_size, window=window,
                    seed=2))


@pytest.mark.parametrize("window", [None, 1000])
def test_prefill_chunk_on_long_cached_context(window: int | None) -> None:
    check(make_case([(5000, 48), (3000, 1)], 4, 1, 32, window=window, seed=3))


@pytest.mark.parametrize("window", [None, 4096])
def test_32k_context_decode_uses_split_k(window: int | None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    splits = record_splits(monkeypatch)
    check(make_case([(32767, 1), (1000, 1)], 4, 1, 16, window=window, seed=4))
    assert splits[0] > 1


def static_meta(case: Case, padding: int = 0) -> AttentionMetadata:
    """A CUDA-graph batch: host lists that must not be read, then ``padding`` rows with
    seq_len 0, slot -1 and a zero block-table row."""
    rows = len(case.seq_lens) + padding
    width = len(case.tables[0])
    return case.meta(
        query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=DEVICE),
        seq_lens=device_tensor(case.seq_lens + [0] * padding, torch.int32),
        block_tables=device_tensor(case.tables + [[0] * width] * padding, torch.int32),
        slot_mapping=device_tensor(case.slots + [-1] * padding, torch.int64),
        query_lens_host=Forbidden(), seq_lens_host=Forbidden(), static_shapes=True,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_static_shapes_with_padding_rows(dtype: torch.dtype) -> None:
    """Padding rows write no K/V and give zeros; the real rows match the reference."""
    real = make_case([(n - 1, 1) for n in (5, 16, 17, 40)], 8, 2, 32, dtype=dtype,
                     spare_columns=2)
    expected, expected_cache = reference(real)
    pad = 3
    fresh = torch.randn(pad, 12, 32, dtype=dtype, device=DEVICE)
    q = torch.cat([real.q, fresh[:, :8]])
    k = torch.cat([real.k, fresh[:, 8:10]])
    v = torch.cat([real.v, fresh[:, 10:]])
    cache = real.cache.clone()
    out = TritonAttentionBackend().forward(q, k, v, cache, static_meta(real, pad), SCALE)
    assert torch.equal(cache.float(), expected_cache)
    assert torch.equal(out[-pad:], torch.zeros_like(out[-pad:]))
    assert relative_error(out[:-pad], expected) <= TOLERANCE[dtype]


def test_static_split_count_comes_from_table_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both rows short, but the table is 32K tokens wide: the split count (fixed for a
    captured graph) is sized for the width, and the short rows still come out right."""
    splits = record_splits(monkeypatch)
    case = make_case([(20, 1), (40, 1)], 4, 1, 16, seed=5, spare_columns=2045)
    assert len(case.tables[0]) * 16 == 32768
    expected, expected_cache = reference(case)
    cache = case.cache.clone()
    out = TritonAttentionBackend().forward(case.q, case.k, case.v, cache, static_meta(case),
                                           SCALE)
    assert splits[0] > 1
    assert torch.equal(cache, expected_cache)
    assert relative_error(out, expected) <= TOLERANCE[torch.float32]


def test_static_shapes_reject_prefill_rows() -> None:
    case = make_case([(3, 2)], 4, 2, 32)
    with pytest.raises(ValueError, match="decode only"):
        TritonAttentionBackend().forward(case.q, case.k, case.v, case.cache.clone(),
                                         case.meta(static_shapes=True), SCALE)


def test_backend_supports_static_shapes() -> None:
    backend = TritonAttentionBackend()
    assert backend.name == "triton" and backend.supports_static_shapes


def test_model_logits_match_torch_backend(tiny_checkpoint: Path) -> None:
    expected = model_logits(tiny_checkpoint, "torch", DEVICE)
    actual = model_logits(tiny_checkpoint, "triton", DEVICE)
    assert actual.shape == (7, 32000)
    assert (actual - expected).abs().max().item() <= 1e-4
