"""Stop strings over streamed text: where to truncate, and what to hold back.

Pure functions on the detokenized output text (no torch, no tokenizer). The engine calls
`check_stop` after every detokenization step with the full output text so far and the
length it has already checked; a stop string may span any number of tokens/chunks.

Semantics: the text behaves as if it arrived one character at a time, so the stop string
that *completes* first wins (the earliest end), and among those ending at the same place the
one starting earliest (the longest). This makes the result independent of how the text was
split into chunks. Without include_stop_str_in_output the output ends just before the stop
string, with it just after. While no stop string has completed, trailing characters that
could begin one are held back, so a client never sees part of a stop string that is later
cut off. When the request finishes for another reason (EOS, max_tokens), the caller flushes
the held-back text: it was not a stop string after all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    stop_str: str  # which stop string matched (vLLM's stop_reason)
    start: int  # index in the text where it begins
    truncate_to: int  # length of the final output text: start, or start + len(stop_str)


@dataclass(frozen=True)
class StopCheck:
    match: StopMatch | None  # set: the request is finished, output is text[:truncate_to]
    # text[:emit_len] is safe to stream now; never less than an earlier call's emit_len.
    emit_len: int


def find_stop(
    text: str, checked_len: int, stop: Sequence[str], include_stop_str_in_output: bool
) -> StopMatch | None:
    """The first stop string to complete in `text`, searching only where a new one can be.

    Everything in text[:checked_len] was searched before and held no stop string, so a new
    match must end after checked_len: a stop string s can start no earlier than
    checked_len - len(s) + 1 (that is the `max(0, checked_len - max_stop_len + 1)` tail).

    Example: text "The answer is 42.\\nEND", checked_len 19 (the text was "The answer is
    42.\\nE" last time), stop ["END", "\\n\\n"]: "END" is searched from 19 - 3 + 1 = 17, found
    at 18 -> StopMatch("END", start=18, truncate_to=18), or truncate_to=21 when
    include_stop_str_in_output. The output is "The answer is 42.\\n".
    """
    best: StopMatch | None = None
    best_end = len(text) + 1
    for stop_str in stop:
        start = text.find(stop_str, max(0, checked_len - len(stop_str) + 1))
        if start < 0:
            continue
        end = start + len(stop_str)
        if end < best_end or (end == best_end and best is not None and start < best.start):
            truncate_to = end if include_stop_str_in_output else start
            best, best_end = StopMatch(stop_str, start, truncate_to), end
    return best


def num_held_back_chars(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the beginning of a stop string.

    The longest suffix of `text` that is a proper prefix of some stop string; those
    characters must not be streamed yet. Complete stop strings are `find_stop`'s job.
    Example: text "Hello, wor", stop ["world!", "or not"] -> suffix "wor" begins "world!"
    (and "or" begins "or not"): hold back 3, stream "Hello, " now.
    """
    held = 0
    for stop_str in stop:
        # Only suffixes longer than what is already held can raise the answer.
        for length in range(min(len(stop_str) - 1, len(text)), held, -1):
            if text.endswith(stop_str[:length]):
                held = length
                break
    return held


def check_stop(
    text: str, checked_len: int, stop: Sequence[str], include_stop_str_in_output: bool
) -> StopCheck:
    """`find_stop`, then how much of `text` may be streamed.

    Example: stop ["###"], chunks "ab#", "#", "#c" (not including the stop string):
      "ab#"   checked 0 -> no match, hold back "#"   -> emit_len 2 ("ab")
      "ab##"  checked 3 -> no match, hold back "##"  -> emit_len 2
      "ab###c" checked 4 -> "###" at 2              -> match, emit_len 2, output "ab"
    """
    match = find_stop(text, checked_len, stop, include_stop_str_in_output)
    return _stop_check(text, match, include_stop_str_in_output,
                       lambda: num_held_back_chars(text, stop))


def _stop_check(text: str, match: StopMatch | None, include_stop_str_in_output: bool,
                held_back: Callable[[], int]) -> StopCheck:
    """What may be streamed, given the search's result; ``held_back`` is only called when
    there is no match and the stop string would be cut."""
    if match is not None:
        return StopCheck(match, match.truncate_to)
    if include_stop_str_in_output:
        # A partial stop string will be shown either way (whole, or as ordinary text).
        return StopCheck(None, len(text))
    return StopCheck(None, len(text) - held_back())


class StopStrings:
    """One request's stop strings, prepared once so that the per-token check is cheap.

    ``check`` answers exactly as :func:`check_stop`. The hold-back search looks up the
    text's suffixes in the set of proper prefixes of the stop strings, after a one-character
    test that rejects most texts at once (their last character ends no prefix).
    """

    __slots__ = ("stop", "include_stop_str_in_output", "max_len", "_prefixes", "_lengths",
                 "_last_chars", "_ends")

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool) -> None:
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.max_len = max(len(s) for s in self.stop)
        self._prefixes = {s[:k] for s in self.stop for k in range(1, len(s))}
        self._lengths = sorted({len(p) for p in self._prefixes}, reverse=True)
        self._last_chars = {p[-1] for p in self._prefixes}
        self._ends = frozenset(s[-1] for s in self.stop if s)

    def held_back(self, text: str) -> int:
        """``num_held_back_chars(text, stop)``."""
        if not text or text[-1] not in self._last_chars:
            return 0
        size = len(text)
        for length in self._lengths:
            if length <= size and text[size - length:] in self._prefixes:
                return length
        return 0

    def check(self, text: str, checked_len: int) -> StopCheck:
        """``check_stop(text, checked_len, stop, include_stop_str_in_output)``."""
        # A new match ends in the unchecked text, so that text holds a stop string's last
        # character; most tokens hold none, and the search is skipped.
        match = None if self._ends.isdisjoint(text[checked_len:]) else find_stop(
            text, checked_len, self.stop, self.include_stop_str_in_output)
        return _stop_check(text, match, self.include_stop_str_in_output,
                           lambda: self.held_back(text))
