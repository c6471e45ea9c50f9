"""Verification of draft tokens: the emitted tokens follow the target's distribution.

With a draft that puts all its mass on one token, rejection sampling keeps the draft with
probability p(draft) and otherwise draws from p with the draft removed; sampling each row
from the target and keeping the drafts up to the first mismatch is exactly that. Checked
with a chi-square test over many independent trials on a 6-token vocabulary.
"""

from __future__ import annotations

import torch

from model.sampler import Sampler, SamplingBatch, exponential_noise
from model.sampling_params import SamplingParams
from model.spec_verify import accepted_tokens, draw_state, replay_draws

CPU = torch.device("cpu")

NUM_TRIALS = 20000
# The chi-square statistic that 5 categories (4 degrees of freedom) exceed by chance with
# probability 0.001.
CHI2_4DF_P001 = 18.467


def chi_square(observed: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def verify_many(logits: torch.Tensor, drafts: list[int], params: SamplingParams
                ) -> list[list[int]]:
    """``NUM_TRIALS`` independent verifications of ``drafts`` against the k + 1 rows."""
    rows = logits.shape[0]
    batch_logits = logits.repeat(NUM_TRIALS, 1)
    batch = SamplingBatch(params=[params] * rows * NUM_TRIALS,
                          prompt_token_ids=[[]] * rows * NUM_TRIALS,
                          output_token_ids=[[]] * rows * NUM_TRIALS,
                          generators=[None] * rows * NUM_TRIALS)
    sampled = Sampler()(batch_logits, batch).token_ids
    return [accepted_tokens(sampled[t * rows:(t + 1) * rows], drafts)
            for t in range(NUM_TRIALS)]


def test_emitted_tokens_follow_the_target_distribution() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, 0.2],
                           [0.0, 1.5, 0.3, 0.3, -1.0, 0.8]])
    params = SamplingParams(temperature=0.9, top_k=5)
    drafts = [4]
    emitted = verify_many(logits, drafts, params)
    # The target's own distributions, after temperature and top-k (token 3 cut in row 0:
    # -0.5 is its smallest logit; in row 1, -1.0).
    target = []
    for row, cut in ((0, 3), (1, 4)):
        scaled = logits[row] / 0.9
        scaled[cut] = float("-inf")
        target.append(scaled.softmax(-1))
    first = torch.bincount(torch.tensor([e[0] for e in emitted]), minlength=6).double()
    assert first[3] == 0
    keep = [t for t in range(6) if t != 3]
    assert chi_square(first[keep], (target[0][keep] * NUM_TRIALS).double()) < CHI2_4DF_P001
    # Where the draft held, the second token follows row 1's distribution.
    second = [e[1] for e in emitted if e[0] == 4]
    assert all(len(e) == 2 for e in emitted if e[0] == 4)
    assert all(len(e) == 1 for e in emitted if e[0] != 4)
    counts = torch.bincount(torch.tensor(second), minlength=6).double()
    keep = [t for t in range(6) if t != 4]
    expected = target[1][keep] * len(second)
    assert chi_square(counts[keep], expected.double()) < CHI2_4DF_P001


def test_accepted_tokens_stop_at_the_first_mismatch() -> None:
    assert accepted_tokens([7, 8, 9], [7, 8]) == [7, 8, 9]
    assert accepted_tokens([7, 5, 9], [7, 8]) == [7, 5]
    assert accepted_tokens([3, 8, 9], [7, 8]) == [3]
    assert accepted_tokens([3], []) == [3]


def test_replay_leaves_the_generator_where_plain_decoding_would() -> None:
    width = 10
    plain = torch.Generator().manual_seed(5)
    for _ in range(2):
        exponential_noise((width,), CPU, plain)
    spec = torch.Generator().manual_seed(5)
    state = draw_state(spec)
    for _ in range(4):  # four rows drawn, two tokens emitted
        exponential_noise((width,), CPU, spec)
    assert state is not None
    replay_draws(spec, state, 2, width)
    assert torch.equal(exponential_noise((width,), CPU, spec),
                       exponential_noise((width,), CPU, plain))
