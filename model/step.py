"""The messages between the engine and the model runners, one round trip per step.

They are small, flat dataclasses so that broadcasting a step to every tensor-parallel rank
stays cheap: a request's prompt and sampling parameters travel once (``NewRequest``), and
after that each step carries only the tokens to compute and the block table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.sampling_params import SamplingParams


@dataclass
class NewRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams


@dataclass
class ScheduledSequence:
    """One sequence's work in a step.

    Example: a 40-token prompt with 32 tokens cached from an earlier turn and a chunk budget
    of 8 → ``token_ids`` = prompt[32:40], ``num_computed_tokens`` = 32, ``sample`` = True
    because the chunk reaches the last known token.

    Speculative decoding: the last ``num_draft_tokens`` of ``token_ids`` are drafts. The step
    scores every position from the last known token on (``num_draft_tokens + 1`` rows) and
    answers with the target's tokens up to and including the first that differs from its
    draft: a decode of ``[t, d1, d2]`` whose target picks ``d1`` then ``x`` emits ``[d1, x]``.
    """

    request_id: str
    token_ids: list[int]
    num_computed_tokens: int
    block_table: list[int]
    sample: bool
    num_draft_tokens: int = 0


@dataclass
class BlockCopies:
    """KV blocks to move between the device cache and the host tier of every rank, before
    the step's attention reads them. Pairs are ``(source, destination)`` block ids.

    Example: the step evicts cached device block 12 (its key moves to host block 3) and
    admits a prompt whose second block is on host block 7, restored into fresh device block
    12 → ``offload=[(12, 3)]``, ``restore=[(7, 12)]``. Offloads run first, so block 12 is
    read before it is overwritten; a host block a restore reads is not reused by an offload
    of the same step.
    """

    offload: list[tuple[int, int]] = field(default_factory=list)  # (device, host)
    restore: list[tuple[int, int]] = field(default_factory=list)  # (host, device)

    def __bool__(self) -> bool:
        return bool(self.offload or self.restore)


@dataclass
class StepInput:
    sequences: list[ScheduledSequence]
    new_requests: list[NewRequest] = field(default_factory=list)
    finished_request_ids: list[str] = field(default_factory=list)
    copies: BlockCopies | None = None


@dataclass
class SampledToken:
    request_id: str
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class StepOutput:
    # In step order; a sequence with drafts has one entry per emitted token, in order.
    sampled: list[SampledToken]
