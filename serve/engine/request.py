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
        return self.value in ("stop", "length", "abort", "error")


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
    num_cached_tokens: int = -1  # prefix-cache hit at first scheduling; -1 until then
    num_preemptions: int = 0
    sent_to_runner: bool = False
    error: str | None = None
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None
    # Streaming text state, owned by the output processor.
    text: str = ""
    emitted_text_len: int = 0
    stop_reason: str | int | None = None
    first_token_time: float | None = None

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
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.is_finished else None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)


@dataclass
class CompletionOutput:
    """vLLM's shape: cumulative text and tokens, plus what is new since the last output."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    error: str | None = None

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt_token_ids),
                "completion_tokens": len(self.outputs[0].token_ids),
                "cached_tokens": self.num_cached_tokens}
