"""Offline throughput: the engine against HF transformers ``generate`` on the same weights.

Prints one JSON line per figure. Example (CPU, the embedded SmolLM2 checkpoint):

    python bench/offline_throughput.py --batch-sizes 1 16 --prompt-len 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def random_prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (batch, prompt_len), generator=gen).tolist()


def run_engine(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from model.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in outputs)
    return elapsed


def run_hf(model, prompts: list[list[int]], max_tokens: int) -> float:
    input_ids = torch.tensor(prompts)  # equal lengths: no padding needed
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + max_tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint dir; default: SmolLM2")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    from serve.llm import LLM

    if args.model is None:
        from model.smollm2 import ensure_smollm2

        args.model = str(ensure_smollm2())
    torch.manual_seed(0)
    llm = LLM(args.model, dtype=args.dtype, num_kv_blocks=4096)
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


if __name__ == "__main__":
    main()
