"""Exact verification of draft tokens on the driver rank.

A sequence with k drafts gets k + 1 logits rows. Row i is the target's distribution after
the known tokens and the first i drafts, so it is sampled exactly as a plain decode step
would sample that position: same masks, penalties (its output history includes drafts
``d[:i]``), min_tokens, temperature and truncation. The target's token of row i is compared
with draft ``d[i]``; the first mismatch ends the step, and its token is the target's own::

    drafts  [d0, d1, d2]    row tokens [d0, x, y, z]  →  emitted [d0, x]  (1 draft accepted)
    drafts  [d0, d1, d2]    row tokens [d0, d1, d2, z] →  emitted [d0, d1, d2, z]

This is rejection sampling for a draft that puts all its mass on one token: the draft is
kept with probability p(d) (the chance the target's draw equals it), and on rejection the
token follows p with d removed and renormalized, which is the residual ``max(0, p - q)``.
So every emitted token follows the target's distribution, and a greedy row reproduces
argmax decoding exactly. A seeded request draws its rows from its own generator in order;
afterwards the generator is put where plain decoding would have left it (one draw per
emitted token), so a seed gives the same tokens with and without speculation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.sampler import exponential_noise


@dataclass
class Rows:
    """Where a sequence's rows sit in the step's logits, and what they verify."""

    request_id: str
    first_row: int
    drafts: list[int]


def accepted_tokens(row_tokens: list[int], drafts: list[int]) -> list[int]:
    """The tokens a verified sequence emits: the target's tokens up to and including the
    first that is not its draft (all k + 1 when every draft held)."""
    emitted = []
    for i, token in enumerate(row_tokens):
        emitted.append(token)
        if i >= len(drafts) or token != drafts[i]:
            break
    return emitted


def draw_state(generator: torch.Generator | None) -> torch.Tensor | None:
    return generator.get_state() if generator is not None else None


def replay_draws(generator: torch.Generator, state: torch.Tensor, num_draws: int,
                 width: int) -> None:
    """Rewind ``generator`` to ``state`` and make the ``num_draws`` noise draws (each
    ``width`` wide) that plain decoding would have made for the emitted tokens."""
    generator.set_state(state)
    for _ in range(num_draws):
        exponential_noise((width,), generator.device, generator)
