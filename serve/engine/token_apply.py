"""Applying a step's tokens to a request: one token, or the run a verified draft emits.

A run is applied token by token with the same checks as plain decoding, so a request ends at
exactly the token it would have ended at without speculation; the tokens after it are not
applied (token-level stops) or taken back (a stop string found while rendering).
"""

from __future__ import annotations

from model.step import SampledToken
from serve.engine.output import finished_status
from serve.engine.request import Request, RequestStatus


def append_tokens(request: Request, tokens: list[SampledToken], max_model_len: int
                  ) -> tuple[list[int], list[dict[int, float]] | None, RequestStatus | None]:
    """Append ``tokens`` in order until one finishes the request. Returns the appended ids,
    their logprobs entries (None when the request asked for none) and the finish status."""
    token_ids: list[int] = []
    entries: list[dict[int, float]] | None = [] if request.logprobs is not None else None
    for token in tokens:
        token_id = token.token_id
        request.append_token(token_id)
        token_ids.append(token_id)
        if entries is not None and token.logprob is not None:
            entry = dict(token.top_logprobs or [])
            entry[token_id] = token.logprob
            entries.append(entry)
            assert request.logprobs is not None
            request.logprobs.append(entry)
            request.cumulative_logprob = (request.cumulative_logprob or 0.0) + token.logprob
        status = finished_status(request, token_id, max_model_len)
        if status is not None:
            return token_ids, entries or None, status
    return token_ids, entries or None, None


def take_back(request: Request, token_ids: list[int], entries: list[dict[int, float]] | None,
              keep: int) -> None:
    """Undo all but the first ``keep`` of the run just appended (``token_ids``, ``entries``
    are shortened in place)."""
    num_dropped = len(token_ids) - keep
    if num_dropped <= 0:
        return
    dropped = token_ids[keep:]
    del request.token_ids[-num_dropped:]
    del request.output_token_ids[-num_dropped:]
    del token_ids[keep:]
    if entries is not None and request.logprobs is not None:
        dropped_entries = entries[keep:]
        del entries[keep:]
        del request.logprobs[-len(dropped_entries):]
        request.cumulative_logprob = (request.cumulative_logprob or 0.0) - sum(
            entry[token_id] for entry, token_id in zip(dropped_entries, dropped, strict=False))
