"""Structured output at tp=2 on real Ray actors (gloo): rank 0 samples, so only it builds the
grammars, and the output is what tp=1 makes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from serve import LLM, SamplingParams
from tests.engine.test_structured_output import random_schema

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_grammars_hold_at_tp2_and_match_tp1(tp_checkpoint: Path) -> None:
    rng = random.Random(5)
    schemas = [random_schema(rng) for _ in range(3)]
    params = [SamplingParams(max_tokens=256, temperature=0.0,
                             structured_outputs={"json": schema}) for schema in schemas]
    params += [SamplingParams(max_tokens=256, seed=i, structured_outputs={"json": schema})
               for i, schema in enumerate(schemas)]
    params.append(SamplingParams(max_tokens=16, seed=9, structured_outputs={
        "choice": ["alpha", "beta"]}, logit_bias={5: -100}))
    prompts = ["Fill in:"] * len(params)
    options = dict(num_kv_blocks=128, dtype="float32", device="cpu")
    with LLM(str(tp_checkpoint), **options) as single:
        expected = [out.outputs[0] for out in single.generate(prompts, params)]
    with LLM(str(tp_checkpoint), tensor_parallel_size=2, **options) as parallel:
        actual = [out.outputs[0] for out in parallel.generate(prompts, params)]
    for schema, output in zip(schemas * 2, actual, strict=False):
        assert output.finish_reason == "stop", output.text
        jsonschema.validate(json.loads(output.text), schema)
    assert actual[-1].text in ("alpha", "beta")
    # Greedy rows follow the same logits up to float rounding across the all-reduce.
    assert [o.token_ids for o in actual[:3]] == [o.token_ids for o in expected[:3]]
