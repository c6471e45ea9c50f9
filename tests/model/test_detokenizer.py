"""The incremental detokenizer: streamed text equals a whole decode, for the Mistral v1
tokenizer and a byte-level BPE, with split characters, byte fallback and special tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from model.detokenizer import DecodeCache
from model.tokenizer import HFTokenizer, MistralV1Tokenizer, load_tokenizer
from tests.model.tokenizer_cases import STREAM_TEXTS, check_random_streams, stream_pieces


def test_detokenizer_holds_split_characters(mistral: MistralV1Tokenizer) -> None:
    ids = mistral.encode("Hello 🦜!", add_bos=False)
    assert mistral.convert_ids_to_tokens(ids) == [
        "▁Hello", "▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>", "!",
    ]  # fmt: skip
    # The byte pieces are held until their run ends with "!".
    assert stream_pieces(mistral, ids) == ["Hello", " ", "", "", "", "", "🦜!", ""]


@pytest.mark.parametrize("name", list(STREAM_TEXTS))
def test_mistral_stream_equals_decode(mistral: MistralV1Tokenizer, name: str) -> None:
    text = STREAM_TEXTS[name]
    ids = [mistral.bos_token_id, *mistral.encode(text, add_bos=False), mistral.eos_token_id]
    pieces = stream_pieces(mistral, ids)
    assert "".join(pieces) == mistral.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)
    # Streaming, not buffering: text comes out at least word by word.
    assert sum(bool(piece) for piece in pieces[:-1]) >= len(text.split())
    kept = stream_pieces(mistral, ids, skip_special_tokens=False)
    assert "".join(kept) == mistral.decode(ids, skip_special_tokens=False) == f"<s> {text}</s>"


def test_byte_fallback_text_really_uses_byte_tokens(mistral: MistralV1Tokenizer) -> None:
    pieces = mistral.convert_ids_to_tokens(mistral.encode(STREAM_TEXTS["byte_fallback"]))
    assert sum(piece.startswith("<0x") for piece in pieces) >= 12


def test_mistral_random_streams_equal_decode(mistral: MistralV1Tokenizer) -> None:
    byte_ids = [i for i in range(mistral.vocab_size) if mistral.sp.IsByte(i)]
    check_random_streams(mistral, byte_ids, seed=1234, rounds=300)


def test_flush_emits_an_unfinished_character(mistral: MistralV1Tokenizer) -> None:
    ids = mistral.encode("ok 🦜", add_bos=False)[:-2]  # cut the emoji's last two bytes
    pieces = stream_pieces(mistral, ids)
    assert pieces[-1] == "\ufffd" * 2  # held back until the end, as decode renders it
    assert "".join(pieces) == mistral.decode(ids)


@dataclass(eq=False)
class _RecordingTokenizer:
    """Delegates to a tokenizer and records how many ids each decode call gets."""

    inner: MistralV1Tokenizer
    decode_sizes: list[int] = field(default_factory=list)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self.inner.special_token_ids

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.decode_sizes.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.inner.convert_ids_to_tokens(ids)


@pytest.mark.parametrize(
    "text",
    [" ".join(STREAM_TEXTS.values()) * 20, "𝔘" * 600],  # the second: 2,400 byte pieces in a row
)
def test_detokenizer_decodes_a_bounded_window(mistral: MistralV1Tokenizer, text: str) -> None:
    recording = _RecordingTokenizer(mistral)
    ids = mistral.encode(text, add_bos=False)
    assert len(ids) > 2000
    # The tokenizer's one-token texts are read once, for every stream on it: not counted.
    cache = DecodeCache.of(recording)  # type: ignore[arg-type]
    cache.text(0, True), cache.text(0, False)
    recording.decode_sizes.clear()
    pieces = stream_pieces(recording, ids)  # type: ignore[arg-type]
    assert "".join(pieces) == mistral.decode(ids) == text
    # Anchor and pending tokens are each at most 16 held byte pieces + 3 bytes of a character;
    # never the whole stream.
    assert max(recording.decode_sizes) <= 2 * (16 + 3) + 1
    assert len(recording.decode_sizes) <= 2 * len(ids)


def test_hf_byte_level_stream_equals_decode(hf_dir: Path) -> None:
    tokenizer = load_tokenizer(hf_dir)
    split_characters = 0
    for text in STREAM_TEXTS.values():
        ids = tokenizer.encode(text)
        split_characters += sum("\ufffd" in tokenizer.decode([i]) for i in ids)
        pieces = stream_pieces(tokenizer, ids)
        assert "".join(pieces) == tokenizer.decode(ids) == text
        assert not any("\ufffd" in piece for piece in pieces)
    # The texts must exercise tokens holding part of a multi-byte character.
    assert split_characters >= 10


def test_hf_byte_level_random_streams_equal_decode(hf_dir: Path) -> None:
    tokenizer = load_tokenizer(hf_dir)
    assert isinstance(tokenizer, HFTokenizer)
    # Tokens that are a stray byte of a multi-byte character (they decode to U+FFFD alone).
    byte_ids = [i for i in range(tokenizer.vocab_size) if "\ufffd" in tokenizer.decode([i])]
    assert len(byte_ids) >= 64
    check_random_streams(tokenizer, byte_ids, seed=99, rounds=300)


def test_appended_texts_are_what_sentencepiece_decodes(mistral: MistralV1Tokenizer) -> None:
    """Every entry, after anchors with and without a leading space (and a bare space piece),
    equals the text a real decode of the two-token window adds."""
    table = mistral.appended_texts()
    assert len(table) > 31000
    anchors = [mistral.sp.piece_to_id(piece) for piece in ("▁the", "ing", "▁▁", "▁", ".")]
    assert all(anchor in table for anchor in anchors)
    for anchor in anchors:
        before = mistral.decode([anchor])
        for token_id, text in table.items():
            assert mistral.decode([anchor, token_id])[len(before):] == text, (anchor, token_id)
