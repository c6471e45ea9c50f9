"""Structured output and token masks end to end through ``serve.llm.LLM`` on the tiny random
model: its unconstrained output is noise, so only the constraint can make it valid."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from model.sampling_params import SamplingParams
from model.structured_output import StructuredOutputsParams
from serve.engine.errors import InvalidRequestError
from serve.llm import LLM
from tests.engine.helpers import assert_all_blocks_free
from tests.engine.test_step_chaining import run_chained, run_series

MAX_TOKENS = 384


@pytest.fixture(scope="module")
def llm(tiny_checkpoint: Path) -> Iterator[LLM]:
    with LLM(str(tiny_checkpoint), num_kv_blocks=512, dtype="float32") as llm:
        yield llm


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """An object of 1-4 properties: bounded strings, integers in a range, booleans, string
    enums, short arrays and (once) a nested object; a random subset required."""
    kinds = ["string", "integer", "boolean", "enum", "array"] + (["object"] if depth == 0 else [])
    properties: dict[str, Any] = {}
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(kinds)
        if kind == "string":
            prop: dict[str, Any] = {"type": "string", "maxLength": rng.randint(1, 8)}
        elif kind == "integer":
            low = rng.randint(-50, 50)
            prop = {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
        elif kind == "boolean":
            prop = {"type": "boolean"}
        elif kind == "enum":
            prop = {"enum": rng.sample(["red", "green", "blue", "a b", "x\"y"], rng.randint(1, 3))}
        elif kind == "array":
            item = rng.choice([{"type": "integer", "minimum": 0, "maximum": 9},
                               {"type": "string", "maxLength": 3}, {"type": "boolean"}])
            prop = {"type": "array", "items": item, "maxItems": rng.randint(0, 3)}
        else:
            prop = random_schema(rng, depth + 1)
        properties[f"{kind}_{i}"] = prop
    required = [name for name in properties if rng.random() < 0.6]
    return {"type": "object", "properties": properties, "required": required}


def generate(llm: LLM, params: list[SamplingParams], prompt: str = "Answer:") -> list[Any]:
    return [out.outputs[0] for out in llm.generate([prompt] * len(params), params)]


def test_randomized_json_schemas_always_validate(llm: LLM) -> None:
    rng = random.Random(2024)
    schemas = [random_schema(rng) for _ in range(12)]
    params = [SamplingParams(max_tokens=MAX_TOKENS, seed=i, temperature=1.0,
                             structured_outputs=StructuredOutputsParams(json=schema))
              for i, schema in enumerate(schemas)]
    for schema, output in zip(schemas, generate(llm, params), strict=True):
        assert output.finish_reason == "stop", (schema, output.text)
        value = json.loads(output.text)
        jsonschema.validate(value, schema)
        # Strict: no property the schema does not name.
        assert set(value) <= set(schema["properties"])
    assert_all_blocks_free(llm.engine)


def test_json_schema_as_text_greedy_and_not_strict(llm: LLM) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                     "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                             structured_outputs={"json": json.dumps(schema)}),
              SamplingParams(max_tokens=MAX_TOKENS, seed=3,
                             structured_outputs={"json": schema, "strict": False})]
    for output in generate(llm, params):
        assert output.finish_reason == "stop"
        jsonschema.validate(json.loads(output.text), schema)


def test_json_object_over_a_small_alphabet(llm: LLM) -> None:
    """Any JSON object, with allowed_token_ids narrowing the noise to a few tokens so that
    objects close within the budget: the grammar and the mask compose."""
    pieces = {piece: token_id for token_id, piece in
              enumerate(llm.tokenizer.convert_ids_to_tokens(range(llm.tokenizer.vocab_size)))}
    alphabet = [pieces[p] for p in ("{", "}", "[", "]", '"', ":", ",", "a", "1", "true")]
    params = [SamplingParams(max_tokens=MAX_TOKENS, seed=i, allowed_token_ids=alphabet
                             + [llm.tokenizer.eos_token_id],
                             structured_outputs={"json_object": True}) for i in range(6)]
    for output in generate(llm, params):
        assert output.finish_reason == "stop", output.text
        assert isinstance(json.loads(output.text), dict)
        assert set(output.token_ids[:-1]) <= set(alphabet)


@pytest.mark.parametrize("pattern", [r"\d{3}-\d{4}", r"[a-z]{2,6}@[a-z]{3}\.(com|org)",
                                     r"(yes|no)( because [a-z ]{1,12})?"])
def test_regex(llm: LLM, pattern: str) -> None:
    params = [SamplingParams(max_tokens=64, seed=i, structured_outputs={"regex": pattern})
              for i in range(4)]
    for output in generate(llm, params):
        assert output.finish_reason == "stop"
        assert re.fullmatch(pattern, output.text), output.text


def test_choice_and_grammar(llm: LLM) -> None:
    choices = ["yes", "no", 'a "quoted" one', "back\\slash", "new\nline", "ünïcödé"]
    params = [SamplingParams(max_tokens=64, seed=i, structured_outputs={"choice": choices})
              for i in range(12)]
    texts = [output.text for output in generate(llm, params)]
    assert set(texts) <= set(choices)
    assert len(set(texts)) > 2  # seeded noise picks different ones
    grammar = 'root ::= ("ab" | "cd") [0-9] ("!" | "?")'
    params = [SamplingParams(max_tokens=16, seed=i, structured_outputs={"grammar": grammar})
              for i in range(4)]
    for output in generate(llm, params):
        assert re.fullmatch(r"(ab|cd)[0-9][!?]", output.text), output.text


def test_a_grammar_that_does_not_compile_is_refused_before_queueing(llm: LLM) -> None:
    cases = [({"regex": "(unclosed"}, "the regex does not compile: .*parenthesis"),
             ({"json": {"type": "no-such-type"}}, "the JSON schema does not compile"),
             ({"json": {"$ref": "#/missing"}}, "the JSON schema does not compile"),
             ({"grammar": "root ::= undefined_rule"}, "the grammar does not compile")]
    for spec, message in cases:
        with pytest.raises(InvalidRequestError, match=message) as caught:
            llm.generate("x", SamplingParams(structured_outputs=spec))
        assert ".cc" not in str(caught.value) and "[" not in str(caught.value)[:2]
    assert llm.engine.requests == {}
    # The engine serves on.
    assert generate(llm, [SamplingParams(max_tokens=8, structured_outputs={"choice": ["ok"]})]
                    )[0].text == "ok"


def test_ids_outside_the_vocabulary_are_refused(llm: LLM) -> None:
    for params, name in ((SamplingParams(logit_bias={32000: 1}), "logit_bias"),
                         (SamplingParams(allowed_token_ids=[1, 40000]), "allowed_token_ids")):
        with pytest.raises(InvalidRequestError, match=f"{name}: token id .* outside"):
            llm.generate("x", params)


def test_logit_bias_allowed_token_ids_and_bad_words(llm: LLM) -> None:
    biased = generate(llm, [SamplingParams(max_tokens=12, seed=1, logit_bias={"777": 100})])[0]
    assert biased.token_ids == [777] * 12
    allowed = [100, 2000, 30000]
    out = generate(llm, [SamplingParams(max_tokens=20, seed=2, allowed_token_ids=allowed)])[0]
    assert set(out.token_ids) <= set(allowed)
    # Ban a word the greedy output uses: a piece that is exactly one token.
    tokenizer = llm.tokenizer
    greedy = SamplingParams(max_tokens=24, temperature=0.0)
    baseline = generate(llm, [greedy])[0].token_ids
    word, token_id = next(
        (piece.lstrip("▁"), t) for t, piece in zip(baseline, tokenizer.convert_ids_to_tokens(
            baseline), strict=True)
        if piece.lstrip("▁").isalpha() and tokenizer.encode(piece.lstrip("▁"), add_bos=False)
        == [t])
    banned = generate(llm, [SamplingParams(max_tokens=24, temperature=0.0,
                                           bad_words=[word])])[0].token_ids
    assert token_id not in banned
    assert banned[:baseline.index(token_id)] == baseline[:baseline.index(token_id)]


def test_grammar_holds_when_steps_are_chained_and_requests_preempted(
        tiny_checkpoint: Path) -> None:
    """The service's loop schedules step N+1 before N answers; 12 blocks preempt requests,
    which then recompute: the runner's matcher must still see each token once, in order."""
    rng = random.Random(7)
    items = [([rng.randrange(3, 32000) for _ in range(rng.choice([5, 30]))],
              SamplingParams(max_tokens=160, seed=i, structured_outputs={"json": schema}))
             for i, schema in enumerate(random_schema(rng) for _ in range(8))]
    args = dict(num_kv_blocks=12, max_num_batched_tokens=64, max_num_seqs=8)
    with LLM(str(tiny_checkpoint), **args) as series_llm:
        expected = run_series(series_llm.engine, items)
    with LLM(str(tiny_checkpoint), **args) as chained_llm:
        got, counts = run_chained(chained_llm.engine, items)
        assert_all_blocks_free(chained_llm.engine)
    assert got == expected
    # Most steps chained; scheduling ahead ran short of the 12 blocks (the loop preempted).
    assert counts["chained"] > 10 and counts["short"] > 0
    decode = chained_llm.tokenizer.decode
    for i, (_, params) in enumerate(items):
        token_ids, reason = got[f"r{i}"]
        if reason == "stop":
            spec = params.structured_outputs
            assert spec is not None and spec.json is not None
            jsonschema.validate(json.loads(decode(token_ids)), json.loads(spec.json))
    assert sum(reason == "stop" for _, reason in got.values()) >= 6


def test_engine_and_runner_share_one_compiler_at_tp1(llm: LLM, tiny_checkpoint: Path) -> None:
    from model import grammar

    spec = StructuredOutputsParams(regex=r"[0-9]{2}")
    generate(llm, [SamplingParams(max_tokens=8, structured_outputs=spec)])
    compilers = [key for key in grammar._compilers if key[0] == str(tiny_checkpoint)]
    assert compilers == [(str(tiny_checkpoint), 32000)]
    assert spec.key in grammar._compilers[compilers[0]]._cache
