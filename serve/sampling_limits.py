"""The engine's ``SamplingParams`` from the fields a front end received (gRPC or OpenAI),
under the service's limits. Both front ends build them here, so a request gets the same
answer, and the same message, whichever API it came through."""

from __future__ import annotations

from typing import Any

from model.sampling_params import SamplingParams
from serve.config import Limits
from serve.errors import InvalidRequestError


class MaxTokensError(InvalidRequestError):
    """``max_tokens`` is above the service's limit."""


def _at_most(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InvalidRequestError(f"{count} {what}; this service takes at most {limit}: "
                                  "send fewer")


def _not_longer(strings: list[Any], limit: int, what: str) -> None:
    longest = max((len(s) for s in strings if isinstance(s, str)), default=0)
    if longest > limit:
        raise InvalidRequestError(f"a {what} of {longest} characters; the limit is {limit}: "
                                  "shorten it")


def _check_lists(values: dict[str, Any], limits: Limits) -> None:
    stop = values.get("stop")
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    _at_most(len(strings), limits.max_stop_strings, "stop strings")
    _not_longer(strings, limits.max_stop_string_chars, "stop string")
    _at_most(len(values.get("stop_token_ids") or []), limits.max_stop_token_ids,
             "stop token ids")
    words = list(values.get("bad_words") or [])
    _at_most(len(words), limits.max_bad_words, "bad words")
    _not_longer(words, limits.max_stop_string_chars, "bad word")
    _at_most(len(values.get("logit_bias") or {}), limits.max_logit_bias, "logit_bias entries")
    n = values.get("n")
    if isinstance(n, int) and n > limits.max_choices:
        raise InvalidRequestError(f"n is {n}; this service makes at most {limits.max_choices} "
                                  "choices per request: ask for fewer")
    logprobs = values.get("logprobs")
    if isinstance(logprobs, int) and logprobs > limits.max_logprobs:
        raise InvalidRequestError(f"logprobs is {logprobs}; this service returns at most "
                                  f"{limits.max_logprobs} per token: ask for fewer")


def limited_sampling_params(values: dict[str, Any], limits: Limits, default_max_tokens: int,
                            context: str = "") -> SamplingParams:
    """``values`` holds only the fields the client set; ``max_tokens`` above the service's
    limit raises :class:`MaxTokensError`, a list over its bound or any value SamplingParams
    refuses INVALID_ARGUMENT with its own message (after ``context``, when given)."""
    requested = values.get("max_tokens")
    if requested is not None and requested > limits.max_new_tokens:
        raise MaxTokensError(f"max_tokens is {requested}, above this service's limit of "
                             f"{limits.max_new_tokens}; ask for fewer tokens")
    try:
        _check_lists(values, limits)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{context}{exc.message}") from None
    values = {**values, "max_tokens": default_max_tokens if requested is None else requested}
    try:
        return SamplingParams(**values)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"{context}{exc}") from None
