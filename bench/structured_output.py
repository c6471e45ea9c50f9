"""What structured output and token masks cost the requests that do not use them, and what a
grammar costs to compile.

Throughput: ``--batch`` plain requests (sampled, seeded, ``--max-tokens`` each) alone, then
the same batch with one more request that lives as long as they do: ``plain_joiner`` (no
mask: what one more row costs by itself) or one that carries a mask:

* ``grammar_json_string``: a JSON schema whose one string must be 4096+ characters long, so
  every step is inside a string (the densest mask: almost every token allowed);
* ``grammar_json_fields``: an array of 512+ objects of integer, boolean and enum fields
  (structural states: few tokens allowed);
* ``allowed_token_ids`` (1,000 ids) and ``logit_bias`` (100 ids), for comparison.

The figure is the plain requests' tokens per second over ``--rounds`` rounds run in
alternation (the machine's noise hits every variant alike): the best round (the least
disturbed, as timeit takes the minimum) and the median, each with its ``loss`` against the
batch alone; ``mask_cost`` compares with ``plain_joiner`` instead, so it is the mask's own
share. End-to-end figures on a shared machine swing by +-10%, more than the effect, so
``sampler_ms_per_step`` isolates it: the sampler's call (where masks are applied) plus the
grammar's advance, on the same logits, variants timed in alternation for ``--steps``
steps; ``mask_ms`` is the difference from ``plain_joiner`` and ``share_of_step`` that over
the measured step time of the batch with ``plain_joiner``. Compile: importing xgrammar
and building the tokenizer info (once per process), then each kind of spec cold and
cached. Prints one JSON line per figure.
Example (CPU, a random 2-layer Mistral with the full 32,000-token vocabulary, where the
per-step host work weighs most):

    python bench/structured_output.py --tiny --rounds 9 --max-tokens 96 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model.random_checkpoint import random_prompts
from model.sampling_params import SamplingParams
from model.structured_output import StructuredOutputsParams

sys.path.insert(0, str(Path(__file__).parent))
from offline_throughput import bench_model  # noqa: E402

LONG_STRING = {"type": "object", "required": ["text"],
               "properties": {"text": {"type": "string", "minLength": 4096}}}
MANY_FIELDS = {"type": "object", "required": ["items"], "properties": {"items": {
    "type": "array", "minItems": 512, "items": {
        "type": "object", "required": ["id", "ok", "color"],
        "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"},
                       "color": {"enum": ["red", "green", "blue"]}}}}}}
COMPILED: dict[str, StructuredOutputsParams] = {
    "json_schema_long_string": StructuredOutputsParams(json=LONG_STRING),
    "json_schema_many_fields": StructuredOutputsParams(json=MANY_FIELDS),
    "json_schema_person": StructuredOutputsParams(json={
        "type": "object", "required": ["name", "age"],
        "properties": {"name": {"type": "string", "maxLength": 32},
                       "age": {"type": "integer", "minimum": 0, "maximum": 150},
                       "email": {"type": "string"}, "tags": {"type": "array",
                                                              "items": {"type": "string"}}}}),
    "json_object": StructuredOutputsParams(json_object=True),
    "regex": StructuredOutputsParams(regex=r"[A-Z][a-z]{2,12}-\d{3,6}(\.[a-z]{2,4})?"),
    "choice": StructuredOutputsParams(choice=["positive", "negative", "neutral"]),
}


def joiners(vocab: int) -> dict[str, dict[str, Any]]:
    """The extra request's SamplingParams fields, by variant (None: the batch alone)."""
    return {
        "plain_joiner": {},
        "grammar_json_string": {"structured_outputs": StructuredOutputsParams(json=LONG_STRING)},
        "grammar_json_fields": {"structured_outputs": StructuredOutputsParams(json=MANY_FIELDS)},
        "allowed_token_ids": {"allowed_token_ids": list(range(100, min(vocab, 1100)))},
        "logit_bias": {"logit_bias": {token_id: 5.0 for token_id in range(100, 200)}},
    }


def run(llm: Any, prompts: list[list[int]], max_tokens: int, joiner: dict[str, Any] | None
        ) -> float:
    """The plain requests' tokens per second, with ``joiner``'s request in the batch."""
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens, ignore_eos=True)
              for i in range(len(prompts))]
    batch = list(prompts)
    if joiner is not None:
        batch.append(prompts[0][::-1])
        params.append(SamplingParams(temperature=1.0, seed=99, max_tokens=max_tokens,
                                     ignore_eos="structured_outputs" not in joiner, **joiner))
    start = time.perf_counter()
    outputs = llm.generate(batch, params)
    elapsed = time.perf_counter() - start
    if joiner is not None:  # it must really have run alongside the whole time
        assert len(outputs[-1].outputs[0].token_ids) == max_tokens, outputs[-1].outputs[0].text
    return len(prompts) * max_tokens / elapsed


def sampler_figures(llm: Any, common: dict[str, Any], batch: int, steps: int,
                    step_ms: float) -> None:
    from model.grammar import GrammarCompiler
    from model.sampler import Sampler, SamplingBatch, make_generator

    vocab = llm.engine.model_config.vocab_size
    eos = llm.tokenizer.eos_token_id
    compiler = GrammarCompiler(llm.tokenizer, vocab)
    logits = torch.randn(batch + 1, vocab, generator=torch.Generator().manual_seed(0)) * 3
    variants = joiners(vocab)
    rows: dict[str, tuple[list[SamplingParams], Any]] = {}
    for name, joiner in variants.items():
        params = [SamplingParams(temperature=1.0, seed=i) for i in range(batch)]
        params.append(SamplingParams(temperature=1.0, seed=99, **joiner))
        spec = joiner.get("structured_outputs")
        rows[name] = (params, compiler.matcher(spec, []) if spec is not None else None)
    sampler = Sampler(reuse_logits=True)  # as the runner does
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, list[list[int]]] = {name: [[] for _ in range(batch + 1)]
                                           for name in variants}
    for _ in range(steps):
        for name, (params, grammar) in rows.items():
            sampling = SamplingBatch(
                params, [[1]] * (batch + 1), outputs[name],
                [make_generator(p.seed) for p in params], eos,
                [None] * batch + [grammar] if grammar is not None else None)
            step_logits = logits.clone()  # a fresh step's logits, handed over
            start = time.perf_counter()
            token_ids = sampler(step_logits, sampling).token_ids
            if grammar is not None:
                grammar.accept(token_ids[-1])
            times[name].append(time.perf_counter() - start)
            for row, token_id in enumerate(token_ids):
                outputs[name][row].append(token_id)
    base = statistics.median(times["plain_joiner"]) * 1e3
    for name, values in times.items():
        median_ms = statistics.median(values) * 1e3
        print(json.dumps({**common, "figure": "sampler_ms_per_step", "variant": name,
                          "steps": steps, "median_ms": round(median_ms, 3),
                          "mask_ms": round(median_ms - base, 3),
                          "share_of_step": round((median_ms - base) / step_ms, 4)}),
              flush=True)


def compile_figures(llm: Any, common: dict[str, Any]) -> None:
    start = time.perf_counter()
    import model.grammar as grammar

    imported = time.perf_counter()
    compiler = grammar.GrammarCompiler(llm.tokenizer, llm.engine.model_config.vocab_size)
    built = time.perf_counter()
    print(json.dumps({**common, "figure": "grammar_setup", "import_xgrammar_ms":
                      round((imported - start) * 1e3, 1), "tokenizer_info_ms":
                      round((built - imported) * 1e3, 1)}), flush=True)
    for name, spec in COMPILED.items():
        start = time.perf_counter()
        compiler.compile(spec)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        compiler.compile(spec)
        cached = time.perf_counter() - start
        print(json.dumps({**common, "figure": "grammar_compile", "spec": name,
                          "cold_ms": round(cold * 1e3, 2), "cached_ms": round(cached * 1e3, 3)}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint dir; default: SmolLM2")
    parser.add_argument("--tiny", action="store_true",
                        help="a random 2-layer Mistral (hidden 64) written to a temp dir")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="sampler steps per variant")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from serve.llm import LLM

    args.model = bench_model(args.model, args.tiny)
    llm = LLM(args.model, dtype=args.dtype, num_kv_blocks=4096, max_num_seqs=args.batch + 1)
    vocab = llm.engine.model_config.vocab_size
    common = {"model": Path(args.model).name, "batch": args.batch,
              "prompt_len": args.prompt_len, "max_tokens": args.max_tokens, "dtype": args.dtype,
              "device": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads()}
    compile_figures(llm, common)
    prompts = random_prompts(args.batch, args.prompt_len, vocab, seed=1)
    variants: dict[str, dict[str, Any] | None] = {"plain_alone": None, **joiners(vocab)}
    for joiner in variants.values():  # warm-up: kernels, and every grammar compiled
        run(llm, prompts[:2], 4, joiner)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, joiner in variants.items():
            rates[name].append(run(llm, prompts, args.max_tokens, joiner))
    best_alone = max(rates["plain_alone"])
    median_alone = statistics.median(rates["plain_alone"])
    for name, values in rates.items():
        best, median = max(values), statistics.median(values)
        record = {**common, "figure": "plain_tokens_per_s", "variant": name,
                  "rounds": args.rounds, "best": round(best, 1), "median": round(median, 1),
                  "worst": round(min(values), 1)}
        if name != "plain_alone":
            record["loss_best"] = round(1 - best / best_alone, 4)
            record["loss_median"] = round(1 - median / median_alone, 4)
        if name not in ("plain_alone", "plain_joiner"):
            record["mask_cost_best"] = round(1 - best / max(rates["plain_joiner"]), 4)
            record["mask_cost_median"] = round(
                1 - median / statistics.median(rates["plain_joiner"]), 4)
        print(json.dumps(record), flush=True)
    step_ms = 1e3 * args.batch / max(rates["plain_joiner"])
    sampler_figures(llm, common, args.batch, args.steps, step_ms)
    llm.shutdown()


if __name__ == "__main__":
    main()
