"""model/grammar.py on the real tokenizers: the vocabulary as xgrammar reads it, compiling
and its cache, clean errors, and a request's matcher from the first token to the stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import xgrammar as xgr

from model.grammar import GrammarCompiler, GrammarError, grammar_compiler, vocab_metadata
from model.logit_masks import bitmask_words, unpack_bitmask
from model.structured_output import StructuredOutputsParams
from model.tokenizer import MistralV1Tokenizer, Tokenizer, load_tokenizer

VOCAB = 32000


@pytest.fixture(scope="module")
def mistral() -> MistralV1Tokenizer:
    return MistralV1Tokenizer.from_file(None)


@pytest.fixture(scope="module")
def compiler(mistral: MistralV1Tokenizer) -> GrammarCompiler:
    return GrammarCompiler(mistral, VOCAB)


def allowed_ids(grammar: object, vocab_size: int = VOCAB) -> list[int]:
    bitmask = torch.zeros((1, bitmask_words(vocab_size)), dtype=torch.int32)
    grammar.fill_bitmask(bitmask, 0)  # type: ignore[attr-defined]
    return unpack_bitmask(bitmask, vocab_size)[0].nonzero().flatten().tolist()


def follow(compiler: GrammarCompiler, tokenizer: Tokenizer, spec: StructuredOutputsParams,
           text: str, stop_token_ids: list[int] | None = None) -> object:
    """A matcher fed the tokens of ``text`` (as the model would have to produce them)."""
    grammar = compiler.matcher(spec, stop_token_ids or [])
    for token_id in tokenizer.encode(text, add_bos=False):
        assert token_id in allowed_ids(grammar, compiler.vocab_size), (text, token_id)
        grammar.accept(token_id)
    return grammar


def test_vocabulary_kinds(mistral: MistralV1Tokenizer, smollm2_dir: Path) -> None:
    assert vocab_metadata(mistral) == (xgr.VocabType.BYTE_FALLBACK, True)
    assert vocab_metadata(load_tokenizer(smollm2_dir)) == (xgr.VocabType.BYTE_LEVEL, False)


def test_a_matcher_allows_the_format_then_only_the_stop_tokens(
        compiler: GrammarCompiler, mistral: MistralV1Tokenizer) -> None:
    spec = StructuredOutputsParams(json={"type": "object", "properties": {
        "a": {"type": "integer"}}, "required": ["a"]})
    # SentencePiece writes "▁{" at the start; the grammar follows the text, so a leading
    # space is not JSON's: the model must pick the bare "{" piece.
    first = allowed_ids(compiler.matcher(spec, []))
    assert mistral.sp.piece_to_id("{") in first and mistral.sp.piece_to_id("▁{") not in first
    grammar = compiler.matcher(spec, [13])
    for piece in ("{", '"', "a", '":', "▁", "4", "2", "}"):
        token_id = mistral.sp.piece_to_id(piece)
        assert token_id in allowed_ids(grammar), piece
        grammar.accept(token_id)
    assert allowed_ids(grammar) == [mistral.eos_token_id, 13]
    grammar.accept(mistral.eos_token_id)
    assert grammar.ended  # type: ignore[attr-defined]
    assert allowed_ids(grammar) == [mistral.eos_token_id, 13]


def test_choice_on_a_byte_level_vocabulary(smollm2_dir: Path) -> None:
    tokenizer = load_tokenizer(smollm2_dir)
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    spec = StructuredOutputsParams(choice=["sunny day", "rain"])
    grammar = follow(compiler, tokenizer, spec, "sunny day")
    assert allowed_ids(grammar, compiler.vocab_size) == [tokenizer.eos_token_id]


def test_compiled_once_per_spec(compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "null"}}}
    as_dict = StructuredOutputsParams(json=schema)
    as_text = StructuredOutputsParams(json='{"type": "object", "properties": {"z": {"type": '
                                           '"string"}, "a": {"type": "null"}}}')
    assert as_dict.key == as_text.key
    assert compiler.compile(as_dict) is compiler.compile(as_text)
    loose = StructuredOutputsParams(json=schema, strict=False)
    assert compiler.compile(loose) is not compiler.compile(as_dict)


def test_errors_are_clean(compiler: GrammarCompiler) -> None:
    for spec, expected in (
        (StructuredOutputsParams(regex="a{2,1}"), "the regex does not compile"),
        (StructuredOutputsParams(json={"type": "objekt"}), "the JSON schema does not compile"),
        (StructuredOutputsParams(grammar="root ::= ("), "the grammar does not compile"),
    ):
        with pytest.raises(GrammarError, match=expected) as caught:
            compiler.compile(spec)
        message = str(caught.value)
        assert ".cc" not in message and "/" not in message and "Traceback" not in message


def test_one_compiler_per_tokenizer_and_process(mistral: MistralV1Tokenizer) -> None:
    loads: list[int] = []

    def load() -> Tokenizer:
        loads.append(1)
        return mistral

    first = grammar_compiler("test-source", VOCAB, load)
    assert grammar_compiler("test-source", VOCAB, load) is first
    assert grammar_compiler("test-source", VOCAB + 64, load) is not first
    assert len(loads) == 2
