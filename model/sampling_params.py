"""Per-request sampling parameters, with vLLM-compatible names and validation.

This module is imported by light client-side code (ingress validation, the SDK), so it must
not import torch: the sampler (`model/sampler.py`) turns these fields into tensors.

Every bad value raises `ValueError` with a message naming the field, the value and the
allowed range, e.g. ``temperature must be >= 0, got -0.5``, so the ingress can return it
verbatim as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.mask_params import normalize_masks, token_id_list
from model.structured_output import StructuredOutputsParams

# vLLM treats temperatures this small as greedy: dividing logits by them overflows float32.
SAMPLING_EPS = 1e-5
# The most top logprobs a request may ask for per token (the OpenAI API's limit).
MAX_LOGPROBS = 20
# The range torch.Generator.manual_seed accepts (it wraps negatives into uint64).
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1


@dataclass
class SamplingParams:
    """How to pick each output token, and when to stop.

    Fields mirror vLLM's `SamplingParams`. After construction `stop` is always a
    `list[str]` and `stop_token_ids` a `list[int]`; `top_k=-1` is normalized to `0` (off).
    """

    max_tokens: int | None = 16  # None: until the context limit
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many tokens exist
    temperature: float = 1.0  # 0 (below SAMPLING_EPS): greedy
    top_p: float = 1.0  # in (0, 1]; 1 = off
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0  # in [0, 1]; 0 = off
    repetition_penalty: float = 1.0  # > 0; 1 = off; over prompt and output tokens
    presence_penalty: float = 0.0  # in [-2, 2]; over output tokens
    frequency_penalty: float = 0.0  # in [-2, 2]; over output tokens
    seed: int | None = None
    # Choices made for the prompt; choice i samples with seed + i (when a seed is set).
    n: int = 1
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # top logprobs to return besides the sampled token's
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Which tokens may come next (model/logit_masks.py): logit_bias maps a token id to what is
    # added to its logit, in [-100, 100] (OpenAI's semantics); only allowed_token_ids may be
    # sampled; bad_words are never generated. The engine tokenizes bad_words into
    # bad_words_token_ids (which a caller may also set directly).
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    bad_words_token_ids: list[list[int]] | None = None
    # The output's format: a JSON schema, any JSON object, a regex, a choice or a grammar.
    structured_outputs: StructuredOutputsParams | None = None
    # Draft tokens per step for this request when the engine speculates: None follows the
    # engine's speculative_config, 0 turns speculation off for it, k caps the engine's k.
    num_speculative_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        _check_int("min_tokens", self.min_tokens)
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        _check_float("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        _check_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k)
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= 1, or 0 or -1 to disable, got {self.top_k}")
        if self.top_k == -1:
            self.top_k = 0
        _check_float("min_p", self.min_p)
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_float(name, value)
            if not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not MIN_SEED <= self.seed <= MAX_SEED:
                raise ValueError(f"seed must be in [-2**63, 2**64 - 1], got {self.seed}")
        _check_int("n", self.n)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self.stop = _normalize_stop(self.stop)
        self.stop_token_ids = _normalize_stop_token_ids(self.stop_token_ids)
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                raise ValueError(
                    f"logprobs must be in [0, {MAX_LOGPROBS}] or None, got {self.logprobs}"
                )
        if self.num_speculative_tokens is not None:
            _check_int("num_speculative_tokens", self.num_speculative_tokens)
            if self.num_speculative_tokens < 0:
                raise ValueError("num_speculative_tokens must be >= 0 or None, got "
                                 f"{self.num_speculative_tokens}")
        normalize_masks(self)

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: top_p/top_k/min_p and the seed are then irrelevant."""
        return self.temperature < SAMPLING_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def has_logit_masks(self) -> bool:
        """A bias or a mask the sampler applies per row (a grammar is the runner's)."""
        return bool(self.logit_bias or self.allowed_token_ids or self.bad_words_token_ids)

    @property
    def needs_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def max_stop_len(self) -> int:
        """Length of the longest stop string (0 without any): how far back a match may start."""
        assert isinstance(self.stop, list)
        return max((len(s) for s in self.stop), default=0)


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass, but `max_tokens=True` is always a client bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")


def _check_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # NaN would slip through every range comparison below; inf breaks softmax.
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _normalize_stop(stop: list[str] | str | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    for s in stop:
        if not isinstance(s, str):
            raise ValueError(f"stop must contain only strings, got {s!r}")
        # An empty stop string would match at once and end every request with no output.
        if not s:
            raise ValueError("stop must not contain an empty string, got ''")
    return list(stop)


def _normalize_stop_token_ids(ids: list[int] | None) -> list[int]:
    return [] if ids is None else token_id_list("stop_token_ids", ids)
