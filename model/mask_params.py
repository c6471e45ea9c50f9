"""Validation of the sampling fields that restrict which tokens may come next: ``logit_bias``,
``allowed_token_ids``, ``bad_words`` (and their token ids) and ``structured_outputs``.

Called from ``SamplingParams.__post_init__``; like it, no torch import, and every bad value is
a ``ValueError`` whose message names the field and says what to send instead. Ids are only
checked for being ints >= 0 here: the engine knows the vocabulary and checks the upper bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model.structured_output import StructuredOutputsParams

if TYPE_CHECKING:
    from model.sampling_params import SamplingParams

# OpenAI's range: -100 bans a token in practice, +100 makes it the only choice.
MAX_LOGIT_BIAS = 100.0


def normalize_masks(params: SamplingParams) -> None:
    """Normalize the mask fields of ``params`` in place, or raise ``ValueError``."""
    if params.logit_bias is not None:
        params.logit_bias = _logit_bias(params.logit_bias) or None
    if params.allowed_token_ids is not None:
        ids = token_id_list("allowed_token_ids", params.allowed_token_ids)
        if not ids:
            raise ValueError("allowed_token_ids must not be empty: leave it out to allow "
                             "every token")
        params.allowed_token_ids = sorted(set(ids))
    if params.bad_words is not None:
        params.bad_words = _bad_words(params.bad_words) or None
    if params.bad_words_token_ids is not None:
        sequences = params.bad_words_token_ids
        if not isinstance(sequences, (list, tuple)):
            raise ValueError(f"bad_words_token_ids must be a list of token id lists, got "
                             f"{sequences!r}")
        params.bad_words_token_ids = [token_id_list("bad_words_token_ids", s) for s in sequences
                                      if s] or None
    if params.structured_outputs is not None:
        params.structured_outputs = StructuredOutputsParams.of(params.structured_outputs)
        if params.ignore_eos:
            raise ValueError("ignore_eos cannot be combined with a structured output format "
                             "(JSON, regex, choice, grammar): the output ends with EOS once "
                             "the format is complete; drop ignore_eos")
        if params.min_tokens:
            raise ValueError("min_tokens cannot be combined with a structured output format "
                             "(JSON, regex, choice, grammar): the format decides where the "
                             "output ends; drop min_tokens")


def _logit_bias(bias: Any) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must map token ids to numbers, got {bias!r}")
    result: dict[int, float] = {}
    for key, value in bias.items():
        # OpenAI sends the ids as JSON object keys, so as strings.
        token_id = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias values must be numbers in [-100, 100], got {value!r} "
                             f"for token {token_id}")
        result[token_id] = float(value)
    return result


def token_id_list(name: str, ids: Any) -> list[int]:
    """``ids`` as a list of token ids (ints >= 0), or a ValueError naming ``name``."""
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"{name} must be a list of ints, got {ids!r}")
    for token_id in ids:
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"{name} must contain ints >= 0, got {token_id!r}")
    return list(ids)


def _bad_words(words: Any) -> list[str]:
    if isinstance(words, str) or not isinstance(words, (list, tuple)):
        raise ValueError(f"bad_words must be a list of strings, got {words!r}")
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"bad_words must contain non-blank strings, got {word!r}")
    return list(words)
