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

from dataclasses import dataclass, field

from model.tokenizer_protocol import Tokenizer

_REPLACEMENT_CHAR = "\ufffd"
# 16 bytes = at least four characters: valid text still streams, in bursts.
_MAX_HELD_BYTE_PIECES = 16


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
    _window_ids: list[int] = field(default_factory=list, init=False, repr=False)
    _read_offset: int = field(default=0, init=False, repr=False)
    _prefix_text: str = field(default="", init=False, repr=False)

    def step(self, token_id: int) -> str:
        """Add one generated token; return the new text that is safe to emit (maybe "")."""
        if self.skip_special_tokens and token_id in self.tokenizer.special_token_ids:
            return ""
        self._window_ids.append(token_id)
        num_pending = len(self._window_ids) - self._read_offset
        if self._is_byte_piece(token_id) and num_pending < _MAX_HELD_BYTE_PIECES:
            return ""
        text = self._decode(self._window_ids)
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT_CHAR):
            # Nothing new, or a character still waits for its remaining bytes.
            return ""
        new_text = text[len(self._prefix_text) :]
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
        new_text = text[len(self._prefix_text) :]
        self._window_ids = self._window_ids[self._read_offset :]
        self._read_offset = len(self._window_ids)
        self._prefix_text = self._decode(self._window_ids)
        return new_text

    def _is_byte_piece(self, token_id: int) -> bool:
        # SentencePiece byte fallback writes a raw byte as "<0xNN>".
        piece = self.tokenizer.convert_ids_to_tokens([token_id])[0]
        return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
