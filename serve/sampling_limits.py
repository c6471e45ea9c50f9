"""The engine's ``SamplingParams`` from the fields a front end received (gRPC or OpenAI),
under the service's limit on new tokens. Both front ends build them here, so a request gets
the same answer, and the same message, whichever API it came through."""

from __future__ import annotations

from typing import Any

from model.sampling_params import SamplingParams
from serve.errors import InvalidRequestError


class MaxTokensError(InvalidRequestError):
    """``max_tokens`` is above the service's limit."""


def limited_sampling_params(values: dict[str, Any], max_new_tokens: int,
                            default_max_tokens: int, context: str = "") -> SamplingParams:
    """``values`` holds only the fields the client set; ``max_tokens`` above the service's
    limit raises :class:`MaxTokensError`, any value SamplingParams refuses INVALID_ARGUMENT
    with its own message (after ``context``, when given)."""
    requested = values.get("max_tokens")
    if requested is not None and requested > max_new_tokens:
        raise MaxTokensError(f"max_tokens is {requested}, above this service's limit of "
                                  f"{max_new_tokens}; ask for fewer tokens")
    values = {**values, "max_tokens": default_max_tokens if requested is None else requested}
    try:
        return SamplingParams(**values)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"{context}{exc}") from None
