"""Batch-1 decode through the engine's two loops, same model, same process: ``LLM.generate``
(the step runs inline, on the calling thread) and ``AsyncLLMEngine`` (the service's loop:
the step runs on a thread of its own while the loop renders the step before).

The two should decode at the same speed: the async loop only moves the host's work off the
critical path. A gap means the step thread computes slower than the caller would, which on
CPU has been OpenMP: a model built on one thread and stepped on another gave libgomp two
worker pools on two cores (model/build_thread.py).

Each loop runs in a process of its own: a process whose main thread has computed (the inline
loop) and then steps on another thread would measure the two-pool case, not the engine.
Prints one JSON line per loop (TPOT p50 over ``--repeats`` prompts, decode steps only) and
their ratio; ``--out`` appends them to a results file. Default: the embedded SmolLM2,
float32, a 512-token prompt and 128 new tokens, greedy, prefix caching off.

    python bench/batch1_decode.py --out bench/results/cpu-2core-batch1-decode.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def inline_tpot(llm: Any, prompt: list[int], max_tokens: int) -> float:
    """(time for the answer - time for its first token) / (tokens - 1), two generate calls."""
    from model.sampling_params import SamplingParams

    start = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0))
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                          temperature=0.0))
    return (time.perf_counter() - start - ttft) / (max_tokens - 1)


async def async_tpot(engine: Any, prompt: list[int], max_tokens: int) -> float:
    """From the first token's arrival to the last's, per token."""
    from model.sampling_params import SamplingParams

    times: list[float] = []
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    async for out in engine.generate(prompt, params):
        times.extend([time.perf_counter()] * len(out.outputs[0].delta_token_ids))
    return (times[-1] - times[0]) / (len(times) - 1)


def measure(args: argparse.Namespace) -> list[float]:
    """This process's TPOTs through ``args.loop``."""
    from serve.engine.async_engine import AsyncLLMEngine
    from serve.llm import LLM

    llm = LLM(args.model, dtype="float32", enable_prefix_caching=False,
              cpu_threads=args.cpu_threads)
    prompts = [[1000 + i + j for j in range(args.prompt_len)] for i in range(args.repeats + 1)]
    if args.loop == "inline":
        inline_tpot(llm, prompts[-1], 8)  # warm-up
        return [inline_tpot(llm, p, args.max_tokens) for p in prompts[:-1]]
    engine = AsyncLLMEngine(llm.engine)
    try:
        asyncio.run(async_tpot(engine, prompts[-1], 8))
        return [asyncio.run(async_tpot(engine, p, args.max_tokens)) for p in prompts[:-1]]
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="checkpoint (default: SmolLM2)")
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="append the lines here")
    parser.add_argument("--loop", choices=["inline", "async"], default=None,
                        help=argparse.SUPPRESS)  # the child process measuring one loop
    args = parser.parse_args()
    if args.loop is not None:
        print("TPOTS " + json.dumps(measure(args)), flush=True)
        return
    child = [sys.executable, __file__, "--prompt-len", str(args.prompt_len), "--max-tokens",
             str(args.max_tokens), "--repeats", str(args.repeats)]
    if args.model:
        child += ["--model", args.model]
    if args.cpu_threads:
        child += ["--cpu-threads", str(args.cpu_threads)]
    tpots: dict[str, list[float]] = {}
    for loop in ("inline", "async"):
        done = subprocess.run([*child, "--loop", loop], capture_output=True, text=True,
                              check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("TPOTS "))
        tpots[loop] = json.loads(line[len("TPOTS "):])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    common = {"bench": "batch1_decode", "commit": commit, "model": args.model or "SmolLM2",
              "dtype": "float32", "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
              "machine": f"{os.cpu_count()}-core {platform.machine()}, no GPU",
              "command": "python bench/batch1_decode.py " + " ".join(sys.argv[1:])}
    lines: list[dict[str, Any]] = []
    for loop, values in tpots.items():
        lines.append({**common, "loop": loop,
                      "tpot_p50_ms": round(1e3 * statistics.median(values), 2),
                      "tpot_ms": [round(1e3 * v, 2) for v in values]})
    lines.append({**common, "figure": "async_over_inline",
                  "value": round(statistics.median(tpots["async"])
                                 / statistics.median(tpots["inline"]), 3)})
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.out is not None:
        with args.out.open("a") as results:
            results.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
