"""Batched sampler: one call per engine step over the logits of the rows that need a token.

Order of operations (as in vLLM):
  1. logprobs: log_softmax of the raw float32 logits, before anything below touches them;
  2. min_tokens: EOS and stop_token_ids get -inf until the row has min_tokens outputs;
  3. logit masks (model/logit_masks.py): bias, allowed ids, bad words, grammar; if any;
  4. penalties: repetition (prompt + output), then frequency and presence (output only);
  5. greedy rows: argmax of the penalized logits;
  6. sampled rows: temperature, top-k, top-p, min-p, then an exponential race.

Reproducibility: the race draws `q ~ Exp(1)` per token and takes `argmax(probs / q)`, which
samples exactly from `probs`. A seeded row draws its q from its own generator with the same
shape every step, and every other operation is row-wise with neutral values (x / 1, x - 0)
for rows that do not use a feature, so its tokens do not depend on which rows share its
batch. Unseeded rows share the device's default generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.logit_masks import TokenGrammar, apply_logit_masks
from model.sampling_params import SamplingParams

_NEG_INF = float("-inf")
# Nucleus mass within float32 rounding of top_p counts as reaching it: probabilities like
# [0.5, 0.3, 0.15, 0.05] with top_p=0.8 keep exactly the first two tokens.
_TOP_P_EPS = 1e-6
# Noise is kept above 0: 0/0 would be NaN and p/0 would win the race.
_MIN_NOISE = torch.finfo(torch.float32).tiny
# Stands in for greedy rows while sampled rows are filtered: temperature 1, no truncation.
_NEUTRAL = SamplingParams(max_tokens=None)


@dataclass
class SamplingBatch:
    params: list[SamplingParams]
    prompt_token_ids: list[list[int]]  # for the repetition penalty
    output_token_ids: list[list[int]]  # tokens generated so far
    generators: list[torch.Generator | None]  # per-request seeded generator, None if unseeded
    eos_token_id: int | None = None  # masked (with stop_token_ids) until min_tokens reached
    grammars: list[TokenGrammar | None] | None = None  # per row; None when no row has one


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # raw log-prob of each sampled token; None if nobody asked
    top_logprobs: list[list[tuple[int, float]] | None] | None  # per row that asked, descending


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded for one request (on the logits' device), or None when unseeded."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Per-row occurrence counts over the vocabulary, shape (num_rows, vocab_size), int64.

    Rows are padded with `vocab_size`, which lands in one extra column that is cut off.
    Example: token_ids=[[3, 1, 3], []], vocab_size=4 -> padded [[3, 1, 3], [4, 4, 4]],
    counts [[0, 1, 0, 2], [0, 0, 0, 0]].
    """
    num_rows = len(token_ids)
    counts = torch.zeros((num_rows, vocab_size + 1), dtype=torch.int64, device=device)
    max_len = max((len(ids) for ids in token_ids), default=0)
    if max_len > 0:
        padded = torch.tensor(
            [ids + [vocab_size] * (max_len - len(ids)) for ids in token_ids],
            dtype=torch.int64,
            device=device,
        )
        counts.scatter_add_(1, padded, torch.ones_like(padded))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    repetition_penalties: torch.Tensor,
    presence_penalties: torch.Tensor,
    frequency_penalties: torch.Tensor,
) -> torch.Tensor:
    """Penalized copy of `logits` (num_rows, vocab_size); the penalties are (num_rows,).

    For every token seen in the prompt or output, a positive logit is divided by the
    repetition penalty and a negative one multiplied (both push it down when penalty > 1).
    Then `logit -= frequency * output_count + presence * (output_count > 0)`.
    Example: logits [2.0, -1.0, 0.5], prompt [0], output [1, 1], repetition 2, frequency 0.5,
    presence 0.25 -> [2.0 / 2, -1.0 * 2 - 0.5 * 2 - 0.25, 0.5] = [1.0, -3.25, 0.5].
    """
    vocab_size = logits.shape[-1]
    output_counts = token_counts(output_token_ids, vocab_size, logits.device)
    output_mask = output_counts > 0
    seen = token_counts(prompt_token_ids, vocab_size, logits.device) > 0
    seen |= output_mask
    penalty = torch.where(seen, repetition_penalties[:, None], 1.0)
    logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    logits = logits - frequency_penalties[:, None] * output_counts.to(logits.dtype)
    return logits - presence_penalties[:, None] * output_mask.to(logits.dtype)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p nucleus to -inf.

    top_k: (num_rows,) int64, 0 = off. Tokens tied with the k-th logit are kept, in both
    the sorting and the non-sorting path, so a row's support never depends on its batch.
    top_p: (num_rows,) float32, 1 = off. Keeps the smallest prefix of the descending
    distribution whose mass reaches p: a token is cut when the mass before it is >= p.
    Example: probs [0.5, 0.3, 0.15, 0.05], p=0.8 -> mass before [0, 0.5, 0.8, 0.95],
    keep the first two.
    """
    if top_k is None and top_p is None:
        return logits
    vocab_size = logits.shape[-1]
    if top_p is None:
        # Top-k alone needs only the k-th largest value, not a full vocabulary sort.
        assert top_k is not None
        # Rows with top-k off ask for k=1 (so topk stays as small as the largest real k)
        # and then get a -inf threshold that masks nothing.
        enabled = top_k > 0
        k = torch.where(enabled, top_k, 1).clamp(max=vocab_size)
        top_values = logits.topk(int(k.max()), dim=-1).values
        kth = top_values.gather(1, (k - 1)[:, None]).masked_fill(~enabled[:, None], _NEG_INF)
        return logits.masked_fill(logits < kth, _NEG_INF)

    # Stable sort: ties keep index order, so the same row sorts the same in any batch.
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True, stable=True)
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size)
        kth = sorted_logits.gather(1, (k - 1)[:, None])
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, _NEG_INF)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    cut = (mass_before >= top_p[:, None] - _TOP_P_EPS) & (top_p < 1.0)[:, None]
    cut[:, 0] = False  # the most likely token always survives, whatever p is
    sorted_logits = sorted_logits.masked_fill(cut, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, sorted_ids, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Cut tokens whose probability is below min_p (num_rows,) times the row's top probability."""
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, _NEG_INF)


def _mask_until_min_tokens(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """-inf on EOS (unless ignore_eos) and stop_token_ids for rows short of min_tokens."""
    vocab_size = logits.shape[-1]
    rows: list[int] = []
    cols: list[int] = []
    for row, (params, output) in enumerate(zip(batch.params, batch.output_token_ids, strict=True)):
        if len(output) >= params.min_tokens:
            continue
        stop_ids = list(params.stop_token_ids or [])
        if batch.eos_token_id is not None and not params.ignore_eos:
            stop_ids.append(batch.eos_token_id)
        # Tokenizer ids past the (possibly sharded/padded) logits width cannot be sampled.
        in_range = [token_id for token_id in stop_ids if token_id < vocab_size]
        rows.extend([row] * len(in_range))
        cols.extend(in_range)
    if not rows:
        return logits
    index = (
        torch.tensor(rows, dtype=torch.int64, device=logits.device),
        torch.tensor(cols, dtype=torch.int64, device=logits.device),
    )
    return logits.index_put(index, torch.tensor(_NEG_INF, device=logits.device))


def exponential_noise(shape: tuple[int, ...], device: torch.device,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) as -log(U): ``exponential_`` costs 25 ns an element on CPU, ``rand`` 3 (64 rows
    of SmolLM2's vocabulary: 79 ms against 14, as much as the forward of those rows)."""
    return torch.rand(shape, generator=generator, device=device).log_().neg_()


def _exponential_race(
    probs: torch.Tensor, generators: list[torch.Generator | None], sampled_rows: list[int]
) -> torch.Tensor:
    """argmax(probs / q), q ~ Exp(1): an exact draw from each row's distribution. A seeded
    row draws where its generator lives (a CPU generator beside CUDA logits) and is copied."""
    unseeded = [row for row in sampled_rows if generators[row] is None]
    if len(unseeded) == probs.shape[0]:
        noise = exponential_noise(tuple(probs.shape), probs.device)
    else:
        noise = torch.ones_like(probs)
        if unseeded:
            index = torch.tensor(unseeded, dtype=torch.int64, device=probs.device)
            noise[index] = exponential_noise((len(unseeded), probs.shape[1]), probs.device)
    for row in sampled_rows:
        generator = generators[row]
        if generator is None:
            continue
        draw = exponential_noise((probs.shape[1],), generator.device, generator)
        noise[row] = draw.to(probs.device)
    return (probs / noise.clamp_min_(_MIN_NOISE)).argmax(dim=-1)


def _top_logprobs(
    raw_logprobs: torch.Tensor, params: list[SamplingParams]
) -> list[list[tuple[int, float]] | None]:
    max_n = min(max(p.logprobs or 0 for p in params), raw_logprobs.shape[-1])
    values, ids = raw_logprobs.topk(max_n, dim=-1)  # sorted descending
    value_rows, id_rows = values.tolist(), ids.tolist()
    return [
        None
        if p.logprobs is None
        else list(zip(id_rows[row][: p.logprobs], value_rows[row][: p.logprobs], strict=True))
        for row, p in enumerate(params)
    ]


class Sampler:
    """Stateless; per-request state (seeded generators, token history) lives in the batch.
    ``reuse_logits``: callers hand their logits over, so masks may write into them."""

    def __init__(self, reuse_logits: bool = False) -> None:
        self.reuse_logits = reuse_logits

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        params = batch.params
        num_rows = logits.shape[0]
        lengths = {len(params), len(batch.generators), len(batch.output_token_ids)}
        if lengths | {len(batch.prompt_token_ids)} != {num_rows}:
            raise ValueError(f"SamplingBatch has {len(params)} rows, logits {num_rows}")
        device = logits.device
        logits, given = logits.to(torch.float32), logits
        wants_logprobs = any(p.needs_logprobs for p in params)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
        logits = _mask_until_min_tokens(logits, batch)
        logits = apply_logit_masks(logits, batch, self.reuse_logits or logits is not given)
        any_penalties = any(p.has_penalties for p in params)
        all_greedy = all(p.is_greedy for p in params)
        if all_greedy and not any_penalties and not wants_logprobs:
            # The common decode step: no tensors built, no extra kernels.
            return SamplerOutput(logits.argmax(dim=-1).tolist(), None, None)

        if any_penalties:
            # Only rows with a repetition penalty need their (possibly 32K-long) prompt.
            prompts = [
                ids if p.repetition_penalty != 1.0 else []
                for p, ids in zip(params, batch.prompt_token_ids, strict=True)
            ]
            logits = apply_penalties(
                logits,
                prompts,
                batch.output_token_ids,
                _floats([p.repetition_penalty for p in params], device),
                _floats([p.presence_penalty for p in params], device),
                _floats([p.frequency_penalty for p in params], device),
            )
        token_ids = logits.argmax(dim=-1)
        sampled_rows = [row for row, p in enumerate(params) if not p.is_greedy]
        if sampled_rows:
            token_ids = self._sample(logits, params, batch.generators, sampled_rows, token_ids)

        if raw_logprobs is None:
            return SamplerOutput(token_ids.tolist(), None, None)
        sampled_logprobs = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)
        return SamplerOutput(
            token_ids.tolist(), sampled_logprobs.tolist(), _top_logprobs(raw_logprobs, params)
        )

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        sampled_rows: list[int],
        greedy_ids: torch.Tensor,
    ) -> torch.Tensor:
        device = logits.device
        # Greedy rows ride along with neutral values; their result is replaced by greedy_ids.
        rows = [_NEUTRAL if p.is_greedy else p for p in params]
        logits = logits / _floats([p.temperature for p in rows], device)[:, None]
        top_k = top_p = None
        if any(p.top_k > 0 for p in rows):
            top_k = torch.tensor([p.top_k for p in rows], dtype=torch.int64, device=device)
        if any(p.top_p < 1.0 for p in rows):
            top_p = _floats([p.top_p for p in rows], device)
        logits = apply_top_k_top_p(logits, top_k, top_p)
        if any(p.min_p > 0.0 for p in rows):
            logits = apply_min_p(logits, _floats([p.min_p for p in rows], device))
        drawn = _exponential_race(logits.softmax(dim=-1), generators, sampled_rows)
        is_sampled = torch.tensor([not p.is_greedy for p in params], device=device)
        return torch.where(is_sampled, drawn, greedy_ids)


def _floats(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)
