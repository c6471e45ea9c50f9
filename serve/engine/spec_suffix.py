"""Suffix decoding (Arctic Inference; vLLM's ``suffix`` method): match the end of the
request's context in suffix trees and propose the most frequent continuation.

Two trees, both depth-capped suffix tries with occurrence counts: one over the request's own
tokens (prompt and output, extended as it grows), and one over the outputs of the last
``max_cached_requests`` finished requests (agents and templated answers repeat them). A
proposal takes, in each tree, the longest suffix of the context that occurred before with
something after it, then walks the most frequent child while the path's probability
(product of ``child.count / node.count``) stays at least ``min_token_prob``; the tree whose
path has the larger expected number of accepted tokens (sum of those probabilities) wins.

Example, request tree, context ``[1, 2, 3, 9, 1, 2]``: the suffix ``[1, 2]`` occurred at 0
followed by 3, then 9 → proposal ``[3, 9, 1, 2]`` (each child the only one: probability 1/2
at the first step, because the current occurrence of ``[1, 2]`` has no continuation yet).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve.engine.request import Request


class _Node:
    __slots__ = ("count", "children")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[int, _Node] = {}


class SuffixTrie:
    """Every substring of length <= ``max_depth`` of the inserted sequences is a path from
    the root; a node counts the occurrences of its path."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root = _Node()

    def add_sequence(self, tokens: Sequence[int], sign: int = 1) -> None:
        """Insert (``sign`` 1) or remove (-1) every window ``tokens[i:i + max_depth]``."""
        for start in range(len(tokens)):
            node = self.root
            for token in tokens[start:start + self.max_depth]:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                child.count += sign
                if child.count <= 0:
                    del node.children[token]
                    break
                node = child

    def find(self, context: Sequence[int], max_length: int) -> _Node | None:
        """The node of the longest suffix of ``context`` (at most ``max_length`` long) that
        has a continuation. Having one is monotone in the suffix length (a suffix of a
        substring that was followed by something was followed by something too), so binary
        search."""
        low, high = 0, min(len(context), max_length, self.max_depth - 1)
        best = None
        while low < high:
            length = (low + high + 1) // 2
            node = self._walk(context[len(context) - length:])
            if node is not None and node.children:
                best, low = node, length
            else:
                high = length - 1
        return best

    def _walk(self, tokens: Sequence[int]) -> _Node | None:
        node: _Node | None = self.root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                return None
        return node


@dataclass
class _RequestTrie:
    trie: SuffixTrie
    # Nodes of the suffixes (lengths 1..max_depth-1) ending at the last indexed token.
    active: list[_Node] = field(default_factory=list)
    num_indexed: int = 0

    def extend(self, tokens: Sequence[int]) -> None:
        """Index the new tokens: each one extends every active suffix by one (O(depth))."""
        max_depth = self.trie.max_depth
        root = self.trie.root
        for token in tokens[self.num_indexed:]:
            active = []
            for node in [root, *self.active]:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                child.count += 1
                active.append(child)
            self.active = active[:max_depth - 1]
        self.num_indexed = len(tokens)


def continuation(node: _Node, num_tokens: int, min_prob: float) -> tuple[list[int], float]:
    """The most frequent path below ``node`` while its probability stays >= ``min_prob``, and
    its score: the sum of the path's probabilities (expected accepted tokens)."""
    tokens: list[int] = []
    prob, score = 1.0, 0.0
    while len(tokens) < num_tokens and node.children:
        token, child = max(node.children.items(), key=lambda item: item[1].count)
        prob *= child.count / max(node.count, child.count)
        if prob < min_prob:
            break
        tokens.append(token)
        score += prob
        node = child
    return tokens, score


class SuffixProposer:
    def __init__(self, max_depth: int = 24, max_cached_requests: int = 1000,
                 min_token_prob: float = 0.1) -> None:
        self.max_depth = max_depth
        self.min_token_prob = min_token_prob
        self.max_cached_requests = max_cached_requests
        self.global_trie = SuffixTrie(max_depth)
        self._cached: deque[list[int]] = deque()
        self._requests: dict[str, _RequestTrie] = {}

    def propose(self, request: Request, num_tokens: int) -> list[int]:
        state = self._requests.get(request.request_id)
        if state is None:
            state = self._requests[request.request_id] = _RequestTrie(SuffixTrie(self.max_depth))
        tokens = request.token_ids
        state.extend(tokens)
        context = tokens[-(self.max_depth - 1):]
        best: tuple[list[int], float] = ([], 0.0)
        # The match leaves the tree depth for the continuation: a match 23 deep in a tree 24
        # deep could propose one token.
        max_length = max(1, self.max_depth - num_tokens)
        for trie in (state.trie, self.global_trie):
            node = trie.find(context, max_length)
            if node is not None:
                found = continuation(node, num_tokens, self.min_token_prob)
                if found[1] > best[1]:
                    best = found
        return best[0]

    def finish(self, request: Request) -> None:
        self._requests.pop(request.request_id, None)
        output = list(request.output_token_ids)
        if not output or self.max_cached_requests == 0:
            return
        self.global_trie.add_sequence(output)
        self._cached.append(output)
        while len(self._cached) > self.max_cached_requests:
            self.global_trie.add_sequence(self._cached.popleft(), sign=-1)
