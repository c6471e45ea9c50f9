"""The interface every draft proposer implements, and the one way to build one.

A proposer sees a request's tokens (prompt and output so far) and returns up to
``num_tokens`` guesses of what comes next; the target model then verifies them in one
forward (``model/spec_verify.py``). Model-free proposers (``spec_ngram.py``,
``spec_suffix.py``) keep per-request indexes that they extend lazily from
``request.token_ids``, which only grows, so the engine need not tell them about each token.

A proposer with a model (draft heads, a draft model) fits the same call, but needs the
target's hidden states of the step before: see the report of issue 23.
"""

from __future__ import annotations

from typing import Protocol

from serve.engine.request import Request
from serve.engine.spec_config import SpeculativeConfig


class Proposer(Protocol):
    def propose(self, request: Request, num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` draft tokens to follow ``request.token_ids`` (may be [])."""
        ...

    def finish(self, request: Request) -> None:
        """The request is done: drop its state (and, for a global index, learn from it)."""
        ...


def build_proposer(config: SpeculativeConfig) -> Proposer:
    if config.method == "ngram":
        from serve.engine.spec_ngram import NgramProposer

        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    from serve.engine.spec_suffix import SuffixProposer

    return SuffixProposer(config.suffix_decoding_max_tree_depth,
                          config.suffix_decoding_max_cached_requests,
                          config.suffix_decoding_min_token_prob)
