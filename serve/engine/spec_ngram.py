"""Prompt lookup (vLLM's ``ngram`` method): find the request's last n tokens earlier in its
own tokens and propose what followed them there.

Each request keeps a map from every n-gram (``min_n <= n <= max_n``) to the position just
after its latest occurrence whose continuation is known, extended as tokens arrive (O(max_n)
per token), so a proposal costs O(max_n) lookups however long the context::

    tokens  = [5, 6, 7, 9, 5, 6, 7]       min_n = 2, max_n = 3
    last 3  = (5, 6, 7) → seen ending at index 2 → propose tokens[3:3 + k] = [9, 5, 6, ...]

Longer n-grams are tried first (a longer match predicts better); the latest occurrence wins
(in a rewrite the nearest copy is the one being followed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.engine.request import Request


@dataclass
class _Index:
    # n-gram → index of the token that followed its latest indexed occurrence.
    follows: dict[tuple[int, ...], int] = field(default_factory=dict)
    # n-grams ending before this position are indexed (their next token is known).
    num_indexed: int = 0


class NgramProposer:
    def __init__(self, min_n: int = 2, max_n: int = 5) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[str, _Index] = {}

    def propose(self, request: Request, num_tokens: int) -> list[int]:
        tokens = request.token_ids
        index = self._indexes.get(request.request_id)
        if index is None:
            index = self._indexes[request.request_id] = _Index()
        self._extend(index, tokens)
        end = len(tokens)
        follows = index.follows
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            start = follows.get(tuple(tokens[end - n:end]))
            if start is not None:
                return tokens[start:start + num_tokens]
        return []

    def _extend(self, index: _Index, tokens: list[int]) -> None:
        # An n-gram ending at position p - 1 (exclusive end p) is indexed once tokens[p] is
        # known, i.e. for p < len(tokens).
        follows = index.follows
        for p in range(max(index.num_indexed, 1), len(tokens)):
            for n in range(self.min_n, min(self.max_n, p) + 1):
                follows[tuple(tokens[p - n:p])] = p
        index.num_indexed = max(index.num_indexed, len(tokens))

    def finish(self, request: Request) -> None:
        self._indexes.pop(request.request_id, None)
