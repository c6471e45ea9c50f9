"""What the engine checks when a request is added: the prompt against the vocabulary, the
context and the KV cache, and the engine's side of logit masks and structured output (ids
checked against the vocabulary, bad words tokenized, the grammar compiled). Whatever is wrong
is refused here, as INVALID_ARGUMENT, before the request is queued; the model runner then
only applies what was checked.

The grammar is compiled with the engine's tokenizer into the process-wide cache of
``model/grammar.py``; at tp=1 the runner in this process finds it there. xgrammar is
imported on the first request that asks for a grammar, never by requests without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from model.sampling_params import SamplingParams
from model.structured_output import StructuredOutputsParams
from model.tokenizer_protocol import Tokenizer
from serve.engine.errors import InvalidRequestError, PromptTooLongError


class RequestConstraints:
    """``tokenizer_source``: the tokenizer's path or preset name, as the runners load it (the
    key of the shared grammar cache); ``vocab_size``: the model's."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, tokenizer_source: str) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.tokenizer_source = tokenizer_source

    def check_prompt(self, token_ids: list[int], max_model_len: int, kv_capacity_tokens: int
                     ) -> None:
        """``kv_capacity_tokens``: the tokens the whole KV cache holds."""
        if not token_ids:
            raise InvalidRequestError("the prompt is empty; send at least one token")
        vocab = self.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        # One position must stay free for the first generated token.
        if len(token_ids) >= max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(token_ids)} tokens but the model's context is "
                f"{max_model_len} tokens (prompt plus at least one new token); "
                "shorten the prompt")
        if len(token_ids) >= kv_capacity_tokens:
            raise PromptTooLongError(
                f"the prompt has {len(token_ids)} tokens but the KV cache holds "
                f"{kv_capacity_tokens} tokens; shorten the prompt or give the cache more "
                "memory")

    def prepare(self, params: SamplingParams) -> SamplingParams:
        """``params`` as the runner needs them (bad words as token ids), or
        InvalidRequestError; requests without masks come back as they are, at once."""
        if not (params.has_logit_masks or params.bad_words or params.structured_outputs):
            return params
        self._check_ids("logit_bias", list(params.logit_bias or ()))
        self._check_ids("allowed_token_ids", params.allowed_token_ids or [])
        for word in params.bad_words_token_ids or []:
            self._check_ids("bad_words_token_ids", word)
        if params.structured_outputs is not None:
            self.compile(params.structured_outputs)
        if params.bad_words:
            words = bad_words_token_ids(params.bad_words, self.tokenizer)
            # A copy: one SamplingParams may be shared by many requests.
            params = dataclasses.replace(
                params, bad_words=None,
                bad_words_token_ids=[*(params.bad_words_token_ids or []), *words])
        return params

    def compile(self, spec: StructuredOutputsParams) -> None:
        """Compile into the shared cache (a no-op after the first time); thread-safe, so the
        asyncio front calls it off the engine thread before posting the request."""
        try:
            from model.grammar import GrammarError, grammar_compiler
        except ImportError:  # the server extra not installed
            raise InvalidRequestError("structured output is not available on this server "
                                      "(xgrammar is not installed): leave out the format"
                                      ) from None
        compiler = grammar_compiler(self.tokenizer_source, self.vocab_size,
                                    lambda: self.tokenizer)
        try:
            compiler.compile(spec)
        except GrammarError as exc:
            raise InvalidRequestError(f"{exc}; fix it or leave it out") from None

    def _check_ids(self, name: str, ids: Sequence[int]) -> None:
        bad = next((t for t in ids if t >= self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"{name}: token id {bad} is outside the vocabulary "
                                      f"[0, {self.vocab_size})")


def bad_words_token_ids(words: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Each word's tokens as it would appear at the start of the text and after a space (vLLM's
    rule): the spaced form is added only when it is a distinct sequence of the same length,
    i.e. the tokenizer has a separate "word after a space" token. SentencePiece (Mistral v1)
    writes both as "▁word"; a byte-level BPE has "word" and "Ġword"."""
    sequences: list[list[int]] = []
    for word in words:
        bare = tokenizer.encode(word.lstrip(), add_bos=False)
        if not bare:
            continue
        sequences.append(bare)
        spaced = tokenizer.encode(" " + word.lstrip(), add_bos=False)
        if len(spaced) == len(bare) and spaced[0] != bare[0]:
            sequences.append(spaced)
    return sequences
