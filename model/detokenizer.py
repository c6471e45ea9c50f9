"""Incremental detokenization for streaming: token ids in, safe-to-emit text out.

Decoding each token alone is wrong in two ways:

- a character can span tokens (SentencePiece byte fallback `<0xF0> <0x9F> <0xA6> <0x9C>` is one
  emoji; byte-level BPE splits multi-byte characters too), and a lone piece decodes to U+FFFD;
- SentencePiece drops the "▁" (space) of the first piece of a decode, so " world" decoded
  alone is "world".

So, as vLLM and HF TGI do, we decode a small window that starts with already-emitted tokens
(the anchor, which gives the decoder its context) and emit only the text past the anchor's,
holding back while the text ends with U+FFFD (an incomplete character).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from model.tokenizer_protocol import Tokenizer

_REPLACEMENT_CHAR = "\ufffd"
# 16 bytes = at least four characters: valid text still streams, in bursts.
_MAX_HELD_BYTE_PIECES = 16


class DecodeCache:
    """What one tokenizer says about single tokens, shared by every detokenizer on it: the
    text of a one-token window (the usual anchor after each emit) and the byte pieces. Both
    depend on the token alone."""

    _shared: weakref.WeakKeyDictionary[Any, DecodeCache] = weakref.WeakKeyDictionary()
    # Tokenizers that cannot be weak keys; each cache holds its tokenizer, so an id is
    # never reused while its entry lives.
    _by_identity: dict[int, DecodeCache] = {}

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[bool, list[str]] = {}
        # SentencePiece byte fallback writes a raw byte as "<0xNN>"; the whole vocabulary
        # is read once (tens of milliseconds for 32K pieces).
        pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
        self.byte_pieces = frozenset(
            i for i, piece in enumerate(pieces)
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"))
        # Tokens whose text after another such token is known without a decode (the
        # tokenizer says which; None: always decode).
        appended = getattr(tokenizer, "appended_texts", None)
        self.appended: dict[int, str] | None = appended() if appended is not None else None

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> DecodeCache:
        try:
            cache = cls._shared.get(tokenizer)
        except TypeError:  # unhashable or not weakly referenceable: kept by identity
            cache = cls._by_identity.get(id(tokenizer))
            if cache is None or cache.tokenizer is not tokenizer:
                cache = cls._by_identity[id(tokenizer)] = cls(tokenizer)
            return cache
        if cache is None:
            cache = cls._shared[tokenizer] = cls(tokenizer)
        return cache

    def text(self, token_id: int, skip_special_tokens: bool) -> str:
        texts = self._texts.get(skip_special_tokens)
        if texts is None:
            # Every token's text at once, the first time (a tenth of a second for 32K
            # pieces, once per tokenizer and process): sampled tokens are spread over the
            # vocabulary, so a cache filled one miss at a time would miss for long.
            decode = self.tokenizer.decode
            texts = self._texts[skip_special_tokens] = [
                decode([i], skip_special_tokens=skip_special_tokens)
                for i in range(self.tokenizer.vocab_size)]
        if 0 <= token_id < len(texts):
            return texts[token_id]
        return self.tokenizer.decode([token_id], skip_special_tokens=skip_special_tokens)


@dataclass
class IncrementalDetokenizer:
    """Turn a stream of token ids into text, one token at a time.

    The concatenation of everything `step` returns plus `flush()` equals
    `tokenizer.decode(all_ids, skip_special_tokens)`.

    State: `_window_ids` holds the tokens from the anchor on; `_read_offset` indexes the first
    token in it whose text has not been emitted; `_prefix_text` is the decode of
    `_window_ids[:_read_offset]`. Each step decodes the window and emits the text past
    `_prefix_text`. Worked example with the Mistral tokenizer ("▁" is a space):

        step "▁Hello": window ["▁Hello"], read 0, prefix "" -> decode "Hello", emit "Hello";
                        then the window becomes ["▁Hello"], read 1, prefix "Hello".
        step "▁world": window ["▁Hello", "▁world"] -> decode "Hello world", emit " world";
                        the window drops the old anchor: ["▁world"], read 1, prefix "world".
        step "<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>": byte pieces, held (emit "", read stays 1).
        step "!":       window ["▁world", <4 bytes>, "!"] -> "world🦜!", emit "🦜!";
                        new window [<4 bytes>, "!"], read 5, prefix "🦜!".

    Byte pieces ("<0x9C>") are held until their run ends, not just until the text stops ending
    in U+FFFD: HF's ByteFallback decoder turns a whole run into U+FFFDs when any byte in it is
    invalid, so text already emitted from the run could change. The hold is capped at
    `_MAX_HELD_BYTE_PIECES` so that a long run cannot grow the window without bound.

    Each decode covers the anchor plus the pending tokens: a few tokens, so a step costs O(1)
    however long the stream.

    Special tokens are dropped before they reach the window when `skip_special_tokens` is set:
    SentencePiece treats a control token as "start of text" for its leading-space rule, so a
    window starting at `</s>` would lose the space of the next word.
    """

    tokenizer: Tokenizer
    skip_special_tokens: bool = True
    cache: DecodeCache | None = field(default=None, repr=False)
    _window_ids: list[int] = field(default_factory=list, init=False, repr=False)
    _read_offset: int = field(default=0, init=False, repr=False)
    # The anchor's text; None: not decoded yet, the anchor being one plain piece (its text
    # is then only needed when a later step takes the slow path).
    _prefix_text: str | None = field(default="", init=False, repr=False)

    def step(self, token_id: int) -> str:
        """Add one generated token; return the new text that is safe to emit (maybe "")."""
        if self.skip_special_tokens and token_id in self._special_ids:
            return ""
        appended = self._appended
        window = self._window_ids
        if appended is not None and self._read_offset == 1 and len(window) == 1:
            new = appended.get(token_id)
            if new is not None and window[0] in appended:
                # Anchor and token are both plain pieces: the token adds its own text. The
                # state moves on exactly as below: the token becomes the one-token anchor.
                window[0] = token_id
                self._prefix_text = None
                return new
        window.append(token_id)
        num_pending = len(window) - self._read_offset
        if self._is_byte_piece(token_id) and num_pending < _MAX_HELD_BYTE_PIECES:
            return ""
        text = self._decode(window)
        prefix = self._prefix()
        if len(text) <= len(prefix) or text.endswith(_REPLACEMENT_CHAR):
            # Nothing new, or a character still waits for its remaining bytes.
            return ""
        new_text = text[len(prefix) :]
        # The tokens just emitted become the anchor of the next window.
        self._window_ids = self._window_ids[self._read_offset :]
        self._read_offset = len(self._window_ids)
        self._prefix_text = self._decode(self._window_ids)
        return new_text

    def flush(self) -> str:
        """Return text still held back at the end of the stream (an incomplete character
        decodes to U+FFFD here, as it does in `tokenizer.decode`)."""
        if self._read_offset == len(self._window_ids):
            return ""
        text = self._decode(self._window_ids)
        new_text = text[len(self._prefix()) :]
        self._window_ids = self._window_ids[self._read_offset :]
        self._read_offset = len(self._window_ids)
        self._prefix_text = self._decode(self._window_ids)
        return new_text

    def __post_init__(self) -> None:
        if self.cache is None:
            self.cache = DecodeCache.of(self.tokenizer)
        self._byte_pieces = self.cache.byte_pieces
        self._appended = self.cache.appended
        self._special_ids = self.tokenizer.special_token_ids

    def _prefix(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._window_ids[:1])
        return self._prefix_text

    def _is_byte_piece(self, token_id: int) -> bool:
        return token_id in self._byte_pieces

    def _decode(self, ids: list[int]) -> str:
        if len(ids) == 1:
            assert self.cache is not None
            return self.cache.text(ids[0], self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
