"""Offline throughput: the engine against HF transformers ``generate`` on the same weights.

Prints one JSON line per figure. Example (CPU, the embedded SmolLM2 checkpoint):

    python bench/offline_throughput.py --batch-sizes 1 16 --prompt-len 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.random_checkpoint import random_prompts, write_tiny_checkpoint

if TYPE_CHECKING:  # annotations only: serve.llm is imported in main, after argument parsing
    from serve.llm import LLM


def mixed_workload(count: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompt and output lengths drawn uniformly from [16, 256]: the shape of real traffic,
    where a static batch waits for its longest member."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(16, 257, (count,), generator=gen).tolist()
    output_lens = torch.randint(16, 257, (count,), generator=gen).tolist()
    prompts = [torch.randint(100, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    return prompts, output_lens


def run_engine(llm: LLM, prompts: list[list[int]], max_tokens: int | list[int]) -> float:
    from model.sampling_params import SamplingParams

    lengths = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert [len(o.outputs[0].token_ids) for o in outputs] == lengths
    return elapsed


def run_hf_batches(model: Any, prompts: list[list[int]], output_lens: list[int], batch: int) -> float:
    """HF static batching: left-padded batches of ``batch``, each run to its longest output."""
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk, lens = prompts[i:i + batch], output_lens[i:i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=max(lens),
                           min_new_tokens=max(lens), do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def run_hf(model: Any, prompts: list[list[int]], max_tokens: int) -> float:
    input_ids = torch.tensor(prompts)  # equal lengths: no padding needed
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + max_tokens
    return elapsed


def write_tiny_mistral() -> str:
    """A random 2-layer Mistral (hidden 64, full 32,000-token vocabulary, 4096-token context)
    with the v1 tokenizer, in a fresh temp dir: per-step overhead dominates here. Its name
    (``tiny-mistral-*``) is the records' ``model``; bench/prefix_routing.py uses it too."""
    directory = Path(tempfile.mkdtemp(prefix="tiny-mistral-"))
    return str(write_tiny_checkpoint(directory, max_position_embeddings=4096))


def bench_model(model: str | None, tiny: bool) -> str:
    """The checkpoint a benchmark runs: ``--tiny``'s random Mistral, the given directory, or
    the embedded SmolLM2; seeds torch so that random weights repeat."""
    torch.manual_seed(0)
    if tiny:
        return write_tiny_mistral()
    if model is None:
        from model.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint dir; default: SmolLM2")
    parser.add_argument("--tiny", action="store_true",
                        help="a random 2-layer Mistral (hidden 64) written to a temp dir")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--mixed-requests", type=int, default=0,
                        help="also run N requests of mixed prompt/output lengths")
    args = parser.parse_args()

    from serve.llm import LLM

    args.model = bench_model(args.model, args.tiny)
    llm = LLM(args.model, dtype=args.dtype, num_kv_blocks=4096,
              max_num_seqs=max(args.batch_sizes))
    vocab = llm.engine.model_config.vocab_size
    hf_model = None
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=getattr(torch, args.dtype)).eval()
    common = {"model": Path(args.model).name, "prompt_len": args.prompt_len,
              "max_tokens": args.max_tokens, "dtype": args.dtype,
              "device": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads()}
    for batch in args.batch_sizes:
        prompts = random_prompts(batch, args.prompt_len, vocab, seed=batch)
        run_engine(llm, prompts[:2], 4)  # warm-up
        engine_s = run_engine(llm, prompts, args.max_tokens)
        engine_tps = batch * args.max_tokens / engine_s
        print(json.dumps({**common, "system": "engine", "batch": batch,
                          "seconds": round(engine_s, 3), "tokens_per_s": round(engine_tps, 1)}),
              flush=True)
        if hf_model is not None:
            run_hf(hf_model, prompts[:2], 4)
            hf_s = run_hf(hf_model, prompts, args.max_tokens)
            hf_tps = batch * args.max_tokens / hf_s
            print(json.dumps({**common, "system": "hf_transformers", "batch": batch,
                              "seconds": round(hf_s, 3), "tokens_per_s": round(hf_tps, 1)}))
            print(json.dumps({**common, "figure": "engine_over_hf", "batch": batch,
                              "ratio": round(engine_tps / hf_tps, 2)}), flush=True)
    if args.mixed_requests:
        batch = max(args.batch_sizes)
        prompts, output_lens = mixed_workload(args.mixed_requests, vocab, seed=7)
        useful = sum(output_lens)
        mixed = {**common, "workload": f"{args.mixed_requests} requests, lengths 16-256",
                 "batch": batch, "prompt_len": "16-256", "max_tokens": "16-256"}
        engine_s = run_engine(llm, prompts, output_lens)
        print(json.dumps({**mixed, "system": "engine", "seconds": round(engine_s, 3),
                          "tokens_per_s": round(useful / engine_s, 1)}), flush=True)
        if hf_model is not None:
            hf_s = run_hf_batches(hf_model, prompts, output_lens, batch)
            print(json.dumps({**mixed, "system": "hf_transformers", "seconds": round(hf_s, 3),
                              "tokens_per_s": round(useful / hf_s, 1)}))
            print(json.dumps({**mixed, "figure": "engine_over_hf",
                              "ratio": round(hf_s / engine_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
