"""A request's state inside the engine, and what the engine hands back for it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from model.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                      RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR})


@dataclass
class Request:
    """Prompt, sampling parameters and progress of one generation.

    ``num_computed_tokens`` counts the tokens whose K/V are in the cache; the tokens still
    to compute are ``token_ids[num_computed_tokens:]``. Example: a 40-token prompt with 32
    tokens from the prefix cache starts at 32 and computes 8; after the first sampled token,
    ``token_ids`` has 41 entries and 40 are computed, so decode computes 1.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved against the context length
    eos_token_id: int | None
    cache_salt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    prompt: str | None = None
    status: RequestStatus = RequestStatus.WAITING
    token_ids: list[int] = field(init=False)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Tokens launched steps are sampling for this request, not collected yet: at most one
    # when a step is scheduled, so the next step may be scheduled before it arrives (its input
    # token is then a placeholder the step runner fills in from the step before).
    num_pending_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first scheduling; -1 until then
    num_preemptions: int = 0
    sent_to_runner: bool = False
    error: str | None = None
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None
    stop_reason: str | int | None = None
    # Set once the finished output has been made: nothing more is emitted for the request.
    final_emitted: bool = False
    # Speculative decoding: the request's totals of proposed and accepted draft tokens.
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.logprobs is not None:
            self.logprobs = []
            self.cumulative_logprob = 0.0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.is_finished else None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)


@dataclass(slots=True)
class CompletionOutput:
    """What one output adds to a generation, and on the finished output the whole of it.

    Streamed outputs are deltas: ``delta_text``, ``delta_token_ids`` and ``delta_logprobs``
    are new since the previous output of the request. ``text``, ``token_ids`` and
    ``logprobs`` are the whole generation on the finished output and empty before it, so
    streaming never copies a growing list (which would cost O(n^2) over a generation).
    ``num_tokens`` counts the tokens generated so far on every output.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[dict[int, float]] = field(default_factory=list)
    num_tokens: int = 0


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    error: str | None = None
    # Speculative decoding so far: draft tokens proposed for the request and accepted (the
    # OpenAI layer may report them; the mean accepted per step is in the engine's stats).
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt_token_ids),
                "completion_tokens": sum(output.num_tokens for output in self.outputs),
                "cached_tokens": self.num_cached_tokens}


def coalesce(outputs: list[RequestOutput]) -> RequestOutput:
    """One output in place of consecutive outputs of one request: their deltas joined, the
    rest from the last (a consumer that fell behind reads everything new at once)."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    merged = last.outputs[0]
    parts = [output.outputs[0] for output in outputs]
    combined = CompletionOutput(
        index=merged.index, text=merged.text, token_ids=merged.token_ids,
        cumulative_logprob=merged.cumulative_logprob, logprobs=merged.logprobs,
        finish_reason=merged.finish_reason, stop_reason=merged.stop_reason,
        delta_text="".join(part.delta_text for part in parts),
        delta_token_ids=[t for part in parts for t in part.delta_token_ids],
        delta_logprobs=[e for part in parts for e in part.delta_logprobs],
        num_tokens=merged.num_tokens)
    return RequestOutput(last.request_id, last.prompt, last.prompt_token_ids, [combined],
                         last.finished, last.num_cached_tokens, last.error,
                         last.num_draft_tokens, last.num_accepted_draft_tokens)
