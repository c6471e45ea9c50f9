"""Sampler and SamplingParams on constructed logits: exact where exact, statistical where not."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.sampler import (
    Sampler,
    SamplingBatch,
    apply_penalties,
    apply_top_k_top_p,
    make_generator,
    token_counts,
)
from model.sampling_params import SamplingParams

PROBS = [0.5, 0.3, 0.15, 0.05]


def make_batch(
    params: list[SamplingParams],
    outputs: list[list[int]] | None = None,
    prompts: list[list[int]] | None = None,
    eos_token_id: int | None = None,
) -> SamplingBatch:
    return SamplingBatch(
        params=params,
        prompt_token_ids=prompts or [[] for _ in params],
        output_token_ids=outputs or [[] for _ in params],
        generators=[make_generator(p.seed) for p in params],
        eos_token_id=eos_token_id,
    )


def sample_counts(logits_row: list[float], params: SamplingParams, num: int) -> torch.Tensor:
    """How often each token is drawn in `num` independent rows with the same logits."""
    logits = torch.tensor([logits_row] * num)
    out = Sampler()(logits, make_batch([params] * num))
    return torch.bincount(torch.tensor(out.token_ids), minlength=len(logits_row))


def test_greedy_is_argmax_and_does_not_touch_input() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    out = Sampler()(logits, make_batch([SamplingParams(temperature=0.0)] * 6))
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs is None and out.top_logprobs is None
    assert torch.equal(logits, before)


def test_top_k_1_is_greedy() -> None:
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(1))
    out = Sampler()(logits, make_batch([SamplingParams(top_k=1)] * 16))
    assert out.token_ids == logits.argmax(-1).tolist()


def _run_steps(rows: list[SamplingParams], row_logits: list[list[torch.Tensor]]) -> list[list[int]]:
    """Decode len(row_logits[0]) steps; every row keeps its own history and generator."""
    batch = make_batch(rows, prompts=[[1, 2, 3] for _ in rows])
    sampler = Sampler()
    for step in range(len(row_logits[0])):
        logits = torch.stack([per_row[step] for per_row in row_logits])
        for row, token_id in enumerate(sampler(logits, batch).token_ids):
            batch.output_token_ids[row].append(token_id)
    return batch.output_token_ids


@pytest.mark.parametrize(
    "tested",
    [
        SamplingParams(temperature=0.9, seed=7),
        SamplingParams(temperature=1.3, top_k=50, seed=8),  # top-k-only path alone, sort in batch
        SamplingParams(temperature=0.7, top_p=0.95, min_p=0.01, seed=9, presence_penalty=0.5),
    ],
)
def test_seeded_row_same_alone_and_in_mixed_batch(tested: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(123)
    num_steps, vocab_size = 20, 1000
    logits = [
        [torch.randn(vocab_size, generator=gen) * 2 for _ in range(num_steps)] for _ in range(8)
    ]
    others = [
        SamplingParams(),
        SamplingParams(temperature=0.0),
        SamplingParams(seed=99, top_p=0.5),
        SamplingParams(top_k=3, repetition_penalty=1.3),
        SamplingParams(seed=5, temperature=0.5, frequency_penalty=1.0, logprobs=3),
        SamplingParams(min_p=0.2, min_tokens=4),
        SamplingParams(temperature=2.0, top_k=10, top_p=0.9),
    ]
    alone = _run_steps([tested], [logits[3]])[0]
    mixed = _run_steps(others[:3] + [tested] + others[3:], logits)
    assert mixed[3] == alone
    again = _run_steps([tested], [logits[3]])[0]
    assert again == alone


def test_different_seeds_differ() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = [[torch.randn(1000, generator=gen) * 0.5 for _ in range(20)]] * 2
    seqs = _run_steps([SamplingParams(seed=1), SamplingParams(seed=2)], logits)
    assert seqs[0] != seqs[1]


def test_sampling_follows_the_distribution_and_temperature() -> None:
    torch.manual_seed(0)
    logits = [math.log(p) for p in PROBS]
    freq = sample_counts(logits, SamplingParams(), 20000).float() / 20000
    assert torch.allclose(freq, torch.tensor(PROBS), atol=0.02)
    sharp = torch.tensor(PROBS) ** 2 / (torch.tensor(PROBS) ** 2).sum()  # T=0.5 squares probs
    freq = sample_counts(logits, SamplingParams(temperature=0.5), 20000).float() / 20000
    assert torch.allclose(freq, sharp, atol=0.02)


def test_top_k_restricts_support() -> None:
    torch.manual_seed(0)
    counts = sample_counts((-0.1 * torch.arange(50.0)).tolist(), SamplingParams(top_k=5), 3000)
    assert counts[5:].sum() == 0
    assert (counts[:5] > 0).all()  # all five survivors are really drawn


def test_top_p_keeps_exactly_the_smallest_nucleus() -> None:
    torch.manual_seed(0)
    logits = [math.log(p) for p in PROBS]
    counts = sample_counts(logits, SamplingParams(top_p=0.8), 4000)
    assert counts[2:].sum() == 0 and (counts[:2] > 0).all()
    assert abs(counts[0].item() / 4000 - 0.5 / 0.8) < 0.04  # renormalized over the nucleus
    rows = torch.tensor([logits] * 3 + [[math.log(p) for p in (0.1, 0.5, 0.1, 0.3)]])
    masked = apply_top_k_top_p(rows, None, torch.tensor([0.8, 0.81, 1.0, 0.8]))
    assert torch.isinf(masked).tolist() == [
        [False, False, True, True],
        [False, False, False, True],
        [False, False, False, False],
        [True, False, True, False],  # 0.5 + 0.3 reaches 0.8 only within float32 rounding
    ]


def test_top_k_only_rows_with_top_k_off_keep_everything() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0]] * 3)
    out = apply_top_k_top_p(logits, torch.tensor([2, 0, 3]), None)
    # Ties with the k-th logit stay, so row 2 keeps both 3.0s.
    assert torch.isfinite(out).tolist() == [
        [True, True, False, False, False],
        [True, True, True, True, True],
        [True, True, True, True, False],
    ]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_top_k_and_top_p_combined_and_no_nan_with_one_survivor() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, -1e4, 1e4]] * 5)
    top_k, top_p = torch.tensor([2, 0, 1, 3, 0]), torch.tensor([1.0, 1e-4, 1.0, 0.9, 1e-9])
    out = apply_top_k_top_p(logits, top_k, top_p)
    assert torch.isfinite(out).sum(-1).tolist() == [2, 1, 1, 1, 1]
    tokens = Sampler()(logits, make_batch([SamplingParams(top_p=1e-4, temperature=0.01)] * 5))
    assert tokens.token_ids == [4] * 5


def test_min_p() -> None:
    torch.manual_seed(0)
    logits = [math.log(p) for p in PROBS]
    counts = sample_counts(logits, SamplingParams(min_p=0.4), 4000)  # cut below 0.4 * 0.5
    assert counts[2:].sum() == 0 and (counts[:2] > 0).all()
    counts = sample_counts(logits, SamplingParams(min_p=0.25), 4000)  # cut below 0.125
    assert counts[3] == 0 and (counts[:3] > 0).all()


def test_token_counts_scatter() -> None:
    counts = token_counts([[3, 1, 3], []], 4, torch.device("cpu"))
    assert counts.tolist() == [[0, 1, 0, 2], [0, 0, 0, 0]]


def test_apply_penalties_hand_computed() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0], [2.0, -1.0, 0.5, 1.0]])
    out = apply_penalties(
        logits,
        prompt_token_ids=[[0], [0, 2]],
        output_token_ids=[[1, 1], [3, 3, 3]],
        repetition_penalties=torch.tensor([2.0, 1.0]),
        presence_penalties=torch.tensor([0.25, -0.5]),
        frequency_penalties=torch.tensor([0.5, 0.1]),
    )
    expected = [
        [2.0 / 2, -1.0 * 2 - 0.5 * 2 - 0.25, 0.5, 1.0],  # token 3 unseen: untouched
        [2.0, -1.0, 0.5, 1.0 - 0.1 * 3 + 0.5],  # prompt tokens get no presence/frequency
    ]
    assert torch.allclose(out, torch.tensor(expected))


@pytest.mark.parametrize(
    ("logits", "params", "prompt", "output", "expected"),
    [
        ([2.0, 1.5], SamplingParams(temperature=0, repetition_penalty=1.5), [0], [], 1),
        ([2.0, 1.5], SamplingParams(temperature=0, repetition_penalty=1.2), [0], [], 0),
        ([-1.0, -1.2], SamplingParams(temperature=0, repetition_penalty=1.5), [], [0], 1),
        ([2.0, 1.5], SamplingParams(temperature=0, presence_penalty=1.0), [], [0], 1),
        ([2.0, 1.5], SamplingParams(temperature=0, presence_penalty=2.0), [0], [], 0),
        ([3.0, 2.0], SamplingParams(temperature=0, frequency_penalty=0.4), [], [0], 0),
        ([3.0, 2.0], SamplingParams(temperature=0, frequency_penalty=0.4), [], [0, 0, 0], 1),
        ([3.0, 2.0], SamplingParams(temperature=0, frequency_penalty=0.3), [], [0, 0, 0], 0),
    ],
)
def test_penalties_flip_argmax(
    logits: list[float], params: SamplingParams, prompt: list[int], output: list[int], expected: int
) -> None:
    batch = make_batch([params], outputs=[list(output)], prompts=[prompt])
    assert Sampler()(torch.tensor([logits]), batch).token_ids == [expected]


def test_min_tokens_masks_eos_and_stop_token_ids() -> None:
    logits = torch.tensor([[0.0, 1.0, 9.0, 8.0, 2.0]] * 4)  # EOS (2) then stop id 3 lead
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[3])
    ignore = SamplingParams(temperature=0, min_tokens=3, ignore_eos=True)
    batch = make_batch([params, params, ignore, SamplingParams(temperature=0)], eos_token_id=2)
    batch.output_token_ids = [[7], [7, 7, 7], [7], [7]]
    assert Sampler()(logits, batch).token_ids == [4, 2, 2, 2]
    torch.manual_seed(0)
    sampled = make_batch([SamplingParams(min_tokens=1)] * 500, eos_token_id=2)
    assert 2 not in Sampler()(logits[:1].expand(500, 5), sampled).token_ids


def test_logprobs_are_raw_log_softmax_and_top_sorted() -> None:
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    params = [
        SamplingParams(),
        SamplingParams(logprobs=0, temperature=0, repetition_penalty=1.5),
        SamplingParams(logprobs=5, temperature=0.3, top_k=3),
        SamplingParams(logprobs=20, presence_penalty=2.0),
    ]
    out = Sampler()(logits, make_batch(params, outputs=[[0], [1], [2], [3]]))
    raw = torch.log_softmax(logits.float(), dim=-1)
    assert out.logprobs == pytest.approx(raw[torch.arange(4), out.token_ids].tolist(), abs=1e-6)
    assert out.top_logprobs is not None
    assert out.top_logprobs[0] is None and out.top_logprobs[1] == []
    for row, n in ((2, 5), (3, 20)):
        top = out.top_logprobs[row]
        assert top is not None and len(top) == n
        values, ids = raw[row].topk(n)
        assert [t for t, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-6)
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:], strict=False))


def test_make_generator() -> None:
    assert make_generator(None) is None
    a, b = make_generator(42), make_generator(42)
    assert a is not None and b is not None
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
        ({"temperature": float("nan")}, "temperature must be finite, got nan"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"top_k": -2}, "top_k must be >= 1, or 0 or -1 to disable, got -2"),
        ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2], got 2.5"),
        ({"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2], got -3"),
        ({"max_tokens": 0}, "max_tokens must be >= 1 or None, got 0"),
        ({"max_tokens": True}, "max_tokens must be an int, got True"),
        ({"min_tokens": -1}, "min_tokens must be >= 0, got -1"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens must be <= max_tokens (4), got 5"),
        ({"logprobs": 21}, "logprobs must be in [0, 20] or None, got 21"),
        ({"seed": 2**64}, "seed must be in [-2**63, 2**64 - 1], got 18446744073709551616"),
        ({"stop": ["ok", ""]}, "stop must not contain an empty string, got ''"),
        ({"stop": [3]}, "stop must contain only strings, got 3"),
        ({"stop_token_ids": [-1]}, "stop_token_ids must contain ints >= 0, got -1"),
        ({"ignore_eos": "yes"}, "ignore_eos must be a bool, got 'yes'"),
    ],
)
def test_sampling_params_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_sampling_params_normalization() -> None:
    params = SamplingParams(stop="###", top_k=-1, temperature=0.0, max_tokens=None)
    assert params.stop == ["###"] and params.stop_token_ids == [] and params.top_k == 0
    assert params.is_greedy and not params.has_penalties and params.max_stop_len == 3
    assert SamplingParams().stop == [] and not SamplingParams().is_greedy
    assert SamplingParams(frequency_penalty=0.1).has_penalties


def test_sampling_params_import_is_torch_free() -> None:
    code = "import sys, model.sampling_params; sys.exit('torch' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=False)
    assert result.returncode == 0
