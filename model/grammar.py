"""Structured output on xgrammar: compile a request's ``StructuredOutputsParams`` against the
model's vocabulary, and follow the request's tokens with a matcher that fills its row of the
sampler's token bitmask.

Where this runs. The engine compiles each request's grammar in ``add_request`` (the asyncio
front does it on a worker thread first), so a grammar that does not compile is refused before
the request is queued. The driver-rank model runner compiles it again through the same
process-wide cache, keeps one ``RequestGrammar`` per request, fills its bitmask row every step
and advances it with every sampled token: the runner sees each token in order, also when the
engine chains steps ahead. At tp=1 engine and runner share this process, so the runner's
compile is a cache lookup; at tp>1 rank 0 loads the tokenizer once and compiles each distinct
grammar once. Nothing here is imported by a runner until a request asks for a grammar.

Costs on one CPU core (bench/structured_output.py): importing xgrammar ~1 s cold (~0.1 s
once torch and transformers are loaded) and the tokenizer info 25 ms for the Mistral v1
vocabulary (32,000 tokens; 170 ms for SmolLM2's 49,152), once per process; compiling 3-12 ms
for a JSON schema or a regex (8-30 ms on the larger vocabulary) and 0.2 ms for a choice, once
per distinct grammar; a cache hit 0.02 ms. Per step, a grammar request adds 0.3-0.7 ms to the
sampler (its bitmask filled, unpacked and applied, the matcher advanced).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import xgrammar as xgr

from model.structured_output import StructuredOutputsParams
from model.tokenizer_protocol import Tokenizer

logger = logging.getLogger(__name__)

# Distinct grammars kept compiled per tokenizer; a JSON schema's is ~100 KB.
CACHE_SIZE = 512
# Whitespace allowed between JSON tokens: real models write a newline and an indent, but an
# unbounded run lets a weak model spin on blanks until max_tokens.
MAX_JSON_WHITESPACE = 8
# xgrammar prefixes its messages with a timestamp and its C++ source position.
_NATIVE_PREFIX = re.compile(r"\[[\d:.]+\] [^\s:]+:\d+: ")


class GrammarError(ValueError):
    """The structured output spec does not compile; the message says what is wrong."""


def tokenizer_info(tokenizer: Tokenizer, vocab_size: int) -> xgr.TokenizerInfo:
    """The vocabulary as xgrammar reads it. ``vocab_size`` is the model's (its logits'
    width), which may exceed the tokenizer's: the extra ids are never allowed."""
    count = min(tokenizer.vocab_size, vocab_size)
    vocab = tokenizer.convert_ids_to_tokens(range(count)) + [""] * (vocab_size - count)
    vocab_type, add_prefix_space = vocab_metadata(tokenizer)
    return xgr.TokenizerInfo(vocab, vocab_type, vocab_size=vocab_size,
                             stop_token_ids=[tokenizer.eos_token_id],
                             add_prefix_space=add_prefix_space)


def vocab_metadata(tokenizer: Tokenizer) -> tuple[xgr.VocabType, bool]:
    """How token strings encode bytes, and whether encoding prepends a space.

    SentencePiece (the Mistral v1 tokenizer): "▁" for a space and <0x0A>-style byte pieces,
    with a space prepended. A tokenizer.json says it in its decoder and pre-tokenizer:
    ``ByteLevel`` (GPT-2 style, "Ġ" for a space) or ``ByteFallback``/``Metaspace``.
    """
    backend = getattr(tokenizer, "tokenizer", None)  # HFTokenizer's tokenizers.Tokenizer
    if backend is None:
        return xgr.VocabType.BYTE_FALLBACK, True
    spec = json.loads(backend.to_str())
    decoders = _parts(spec.get("decoder"), "decoders")
    pre_tokenizers = _parts(spec.get("pre_tokenizer"), "pretokenizers")
    normalizers = _parts(spec.get("normalizer"), "normalizers")
    if any(part.get("type") == "ByteLevel" for part in decoders):
        vocab_type = xgr.VocabType.BYTE_LEVEL
    elif any(part.get("type") == "ByteFallback" for part in decoders):
        vocab_type = xgr.VocabType.BYTE_FALLBACK
    else:
        vocab_type = xgr.VocabType.RAW
    prefix = any(part.get("type") == "Metaspace" and (
        part.get("add_prefix_space") or part.get("prepend_scheme") in ("always", "first"))
        for part in pre_tokenizers)
    prefix |= any(part.get("type") == "Prepend" for part in normalizers)
    return vocab_type, prefix


def _parts(component: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(component, dict):
        return []
    if component.get("type") == "Sequence":
        return [part for part in component.get(key, []) if isinstance(part, dict)]
    return [component]


class GrammarCompiler:
    """Compiles specs for one tokenizer, keeping the ``CACHE_SIZE`` most recent; thread-safe
    (the engine thread, its asyncio front and, at tp=1, the step thread share one)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = tokenizer.eos_token_id
        self._compiler = xgr.GrammarCompiler(tokenizer_info(tokenizer, vocab_size),
                                             max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str, bool], xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        key = spec.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        try:
            compiled = self._compile(spec)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with C++ context
            raise GrammarError(f"{_what(spec)} does not compile: {_clean(exc)}") from None
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        compiler = self._compiler
        kind = spec.kind
        if kind == "json":
            assert isinstance(spec.json, str)
            return compiler.compile_json_schema(spec.json, strict_mode=spec.strict,
                                                max_whitespace_cnt=MAX_JSON_WHITESPACE)
        if kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', strict_mode=False,
                                                max_whitespace_cnt=MAX_JSON_WHITESPACE)
        if kind == "regex":
            assert spec.regex is not None
            return compiler.compile_regex(spec.regex)
        if kind == "choice":
            assert spec.choice is not None
            # JSON string escapes are the EBNF literal escapes, so any text is one literal.
            return compiler.compile_grammar(
                "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice))
        assert spec.grammar is not None
        return compiler.compile_grammar(spec.grammar)

    def matcher(self, spec: StructuredOutputsParams, stop_token_ids: list[int]
                ) -> RequestGrammar:
        """A fresh matcher for one request; ``stop_token_ids`` (besides EOS) may end it too."""
        stops = [self.eos_token_id, *(t for t in stop_token_ids
                                      if t != self.eos_token_id and t < self.vocab_size)]
        return RequestGrammar(xgr.GrammarMatcher(self.compile(spec), override_stop_tokens=stops),
                              stops)


def _what(spec: StructuredOutputsParams) -> str:
    return {"json": "the JSON schema", "json_object": "the JSON object grammar",
            "regex": "the regex", "choice": "the choice list",
            "grammar": "the grammar"}[spec.kind]


def _clean(exc: BaseException) -> str:
    """The library's message without its timestamp, source path or traceback lines."""
    lines = [_NATIVE_PREFIX.sub("", line).strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(("File ", "  ")))
    return text[:500] or type(exc).__name__


class RequestGrammar:
    """One request's position in its grammar. ``fill_bitmask`` writes the tokens allowed next
    (bit j of word i allows token 32*i + j); once the grammar has ended, or a token outside
    it was forced (a mask left nothing else), only the stop tokens are allowed."""

    __slots__ = ("_matcher", "_stops", "ended")

    def __init__(self, matcher: xgr.GrammarMatcher, stop_token_ids: list[int]) -> None:
        self._matcher = matcher
        self._stops = stop_token_ids
        self.ended = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if not self.ended:
            self._matcher.fill_next_token_bitmask(bitmask, row)
            return
        bitmask[row] = 0
        for token_id in self._stops:
            word, bit = divmod(token_id, 32)
            if word < bitmask.shape[1]:
                # int32 words: bit 31 is the sign bit, so set it through a signed value.
                bitmask[row, word] |= (1 << bit) - (1 << 32 if bit == 31 else 0)

    def accept(self, token_id: int) -> None:
        if self.ended:
            return
        if not self._matcher.accept_token(token_id):
            logger.warning("token %d is outside the request's grammar; it ends here", token_id)
            self.ended = True
        elif self._matcher.is_terminated():
            self.ended = True


_compilers: dict[tuple[str, int], GrammarCompiler] = {}
_compilers_lock = threading.Lock()


def grammar_compiler(source: str, vocab_size: int,
                     load: Callable[[], Tokenizer]) -> GrammarCompiler:
    """The process's compiler for a tokenizer (``source``: its path or preset name), built on
    first use from ``load()``; the engine and, at tp=1, the runner get the same one."""
    key = (source, vocab_size)
    with _compilers_lock:
        compiler = _compilers.get(key)
        if compiler is None:
            compiler = _compilers[key] = GrammarCompiler(load(), vocab_size)
        return compiler
