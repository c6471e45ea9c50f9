"""The CPU attention backend (paged C kernel for short rows, SDPA for prefill chunks) agrees
with the torch reference on the paged KV cache, and the model gives the same logits and
tokens through it as through the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.attention.cpu_backend import KERNEL_MAX_QUERIES, CpuAttentionBackend, plan_rows
from model.attention.cpu_kernel import load_kernel
from tests.model.attention_cases import (
    SCALE,
    Case,
    make_case,
    model_logits,
    reference,
    relative_error,
)

CPU = torch.device("cpu")
TOLERANCE = 2e-5


def check(case: Case, backend: CpuAttentionBackend | None = None) -> None:
    expected, expected_cache = reference(case)
    cache = case.cache.clone()
    out = (backend or CpuAttentionBackend()).forward(case.q, case.k, case.v, cache,
                                                     case.meta(), SCALE)
    assert out.shape == case.q.shape and torch.isfinite(out).all()
    assert torch.equal(cache, expected_cache)  # the step's K/V written, nothing else
    assert relative_error(out, expected) <= TOLERANCE


def test_the_kernel_builds_here() -> None:
    """CI machines have a C compiler: the fast path must be the one under test."""
    assert load_kernel() is not None
    assert CpuAttentionBackend().kernel is not None


BOUNDARY_LENS = [1, 15, 16, 17, 31, 32, 33, 64, 65, 100]


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size"), [
    (8, 2, 128, 16),  # Mistral's 4:1 grouping and head size
    (9, 3, 64, 16),  # SmolLM2's 3:1
    (4, 4, 64, 16),  # no grouping
    (4, 1, 80, 32),  # a head size that is not a power of two
])
def test_decode_at_block_boundaries(heads: int, kv_heads: int, head_dim: int,
                                    block_size: int) -> None:
    check(make_case([(n - 1, 1) for n in BOUNDARY_LENS], heads, kv_heads, head_dim,
                    block_size, device=CPU))


@pytest.mark.parametrize("window", [None, 1, 5, 40])
def test_rows_of_several_queries_over_a_cached_context(window: int | None) -> None:
    """Rows of 2..8 queries (draft verification) see the cache and each other causally."""
    seqs = [(30, 2), (0, 3), (47, 8), (16, 5), (100, 1)]
    check(make_case(seqs, 8, 2, 32, window=window, seed=1, device=CPU))


@pytest.mark.parametrize("window", [None, 24])
def test_mixed_batch(window: int | None) -> None:
    """Decode rows, chunks on cached blocks and fresh prompts in one step, including a row
    one query past the kernel's limit."""
    seqs = [(40, 1), (20, 13), (0, 37), (70, 1), (0, 2), (15, 1), (33, 64),
            (10, KERNEL_MAX_QUERIES + 1)]
    check(make_case(seqs, 8, 2, 64, window=window, seed=2, device=CPU))


@pytest.mark.parametrize("window", [None, 1000])
def test_long_context(window: int | None) -> None:
    check(make_case([(5000, 48), (3000, 1), (4095, 1)], 4, 1, 32, window=window, seed=3,
                    device=CPU))


def test_plan_splits_rows_by_query_count() -> None:
    case = make_case([(8, 1), (0, 40), (17, 3)], 4, 2, 16, device=CPU)
    rows, long_rows = plan_rows(case.meta())
    assert rows is not None
    assert rows.tolist() == [[0, 2], [0, 41], [1, 3], [9, 20]]
    assert long_rows == [(1, 1)]


def test_without_the_kernel_it_is_the_reference() -> None:
    backend = CpuAttentionBackend()
    backend.kernel = None
    check(make_case([(40, 1), (20, 13)], 8, 2, 64, seed=4, device=CPU), backend)


def test_model_logits_and_tokens_match_the_reference(tiny_checkpoint: Path) -> None:
    expected = model_logits(tiny_checkpoint, "torch", CPU)
    actual = model_logits(tiny_checkpoint, "cpu", CPU)
    assert actual.shape == (7, 32000)
    assert (actual - expected).abs().max().item() <= 1e-4
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))
