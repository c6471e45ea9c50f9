"""Speculative decoding on SmolLM2, 2-core CPU: our engine with and without drafts (and
vLLM CPU with and without its ``ngram`` method, given ``--vllm-venv``), a copy-heavy and a
plain-chat workload, concurrency 1, 4 and 64. One JSON line per (system, workload,
concurrency), then the goal ratios; ``--out`` appends them to a results file.

    python bench/speculative.py [--concurrency 1 4 64] [--methods none ngram suffix]
    python bench/speculative.py --vllm-venv ~/vllm-venv --out bench/results/cpu-2core-speculative.jsonl

The peer (bench/speculative_vllm_job.py) runs ``vllm.LLM`` offline in its own venv, made as
bench/peer_serving.py says.

Our engine runs the loop the service runs (``LLMEngine.advance`` with the threaded step
runner: steps scheduled ahead unless speculating), closed loop at each concurrency. TPOT is
per request, (finish - first token) / (output tokens - 1), averaged; greedy decoding, so the
tokens are the same with and without speculation and the times compare like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSAGE = (
    "The lighthouse on the northern cape was built in 1874 by a team of twelve masons who "
    "carried every stone up the cliff path by hand. For more than a century its keepers "
    "lived in the small cottage beside the tower, trimming the wick at dusk, winding the "
    "clockwork that turned the lens, and writing the weather into a leather logbook each "
    "morning. When the light was automated in 1983, the last keeper, a widower named Thomas "
    "Hale, refused to leave. He stayed on as a volunteer guide, showing visitors the brass "
    "fittings he had polished for thirty years and telling them about the storm of 1953, "
    "when waves broke over the gallery and the lens kept turning through the night. Today "
    "the cottage is a small museum. Its shelves hold the keepers' logbooks, a collection of "
    "ship models carved by Hale himself, and a map of every wreck on the cape since 1700. "
    "The tower is open to the public from April to October, and on clear evenings the "
    "volunteers still climb the one hundred and nine steps to watch the beam sweep across "
    "the water.")
CODE = '''def load_orders(path):
    orders = []
    with open(path) as handle:
        for line in handle:
            fields = line.strip().split(",")
            if len(fields) != 4:
                continue
            order_id, customer, amount, status = fields
            orders.append({"id": order_id, "customer": customer,
                           "amount": float(amount), "status": status})
    return orders


def total_by_customer(orders):
    totals = {}
    for order in orders:
        if order["status"] != "paid":
            continue
        totals[order["customer"]] = totals.get(order["customer"], 0.0) + order["amount"]
    return totals


def top_customers(totals, count):
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return ranked[:count]
'''
COPY_TASKS = [
    "Repeat the following passage exactly, word for word, with no commentary:\n\n" + PASSAGE,
    "Rewrite this code with the function load_orders renamed to read_orders. Output the whole "
    "code block and nothing else:\n\n```python\n" + CODE + "```",
]
CHAT_TASKS = [
    "Write a short story about a cat who learns to sail.",
    "What are three good habits for staying healthy? Explain each briefly.",
    "Describe how a bicycle works to a ten-year-old.",
    "Give me a plan for a relaxing weekend in the countryside.",
]


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


def prompts_for(tokenizer: Any, workload: str, count: int) -> list[list[int]]:
    tasks = COPY_TASKS if workload == "copy" else CHAT_TASKS
    texts = [tasks[i % len(tasks)] for i in range(count)]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": t}]))
            for t in texts]


def run_ours(model_dir: str, method: str, workload: str, concurrency: int, num_requests: int,
             max_tokens: int) -> dict[str, Any]:
    from model.sampling_params import SamplingParams
    from serve import LLM
    from serve.engine.step_runner import ThreadedStepRunner

    spec = None if method == "none" else {"method": method, "num_speculative_tokens": 5}
    with LLM(model_dir, dtype="float32", speculative_config=spec) as llm:
        engine = llm.engine
        engine.step_runner = ThreadedStepRunner(engine.executor)
        prompts = prompts_for(llm.tokenizer, workload, num_requests)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        # Warm up (oneDNN packing, first-step allocations) outside the timing.
        engine.add_request("warm", prompts[0], SamplingParams(temperature=0.0, max_tokens=4))
        launched = None
        while True:
            launched, _ = engine.advance(launched)
            if launched is None and not engine.has_unfinished_requests():
                break
        first: dict[str, float] = {}
        done: dict[str, tuple[float, int]] = {}
        next_index = 0
        start = time.perf_counter()

        def admit() -> None:
            nonlocal next_index
            while next_index < num_requests and \
                    len(engine.requests) < concurrency:
                engine.add_request(f"r{next_index}", prompts[next_index], params)
                next_index += 1

        launched = None
        try:
            while True:
                launched, outputs = engine.advance(launched, admit)
                now = time.perf_counter()
                for out in outputs:
                    if out.request_id not in first and out.outputs[0].num_tokens:
                        first[out.request_id] = now
                    if out.finished:
                        done[out.request_id] = (now, out.outputs[0].num_tokens)
                if launched is None and not engine.has_unfinished_requests() and \
                        next_index >= num_requests:
                    break
        finally:
            engine.step_runner.shutdown()
        wall = time.perf_counter() - start
        stats = engine.stats()
    tpots = [(end - first[rid]) / (n - 1) for rid, (end, n) in done.items() if n > 1]
    num_out = sum(n for _, n in done.values())
    drafts = stats.num_spec_drafts
    return {"tpot_ms": round(1000 * mean(tpots), 2), "output_tok_s": round(num_out / wall, 1),
            "num_requests": num_requests, "num_output_tokens": num_out,
            "mean_accepted_per_step": round(stats.num_spec_accepted_tokens / drafts, 2)
            if drafts else None,
            "acceptance_rate": round(stats.num_spec_accepted_tokens
                                     / stats.num_spec_draft_tokens, 3)
            if stats.num_spec_draft_tokens else None}


def run_vllm(venv: Path, model_dir: str, method: str, runs: list[dict[str, Any]],
             max_tokens: int) -> tuple[list[dict[str, Any]], str]:
    """vLLM's figures for every (workload, concurrency, prompts) of ``runs`` with ``method``,
    and, if it stopped early, why (e.g. ngram unsupported on its CPU build)."""
    job = {"model": model_dir, "method": method, "max_tokens": max_tokens, "runs": runs}
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_KVCACHE_SPACE": "4"}
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([str(venv / "bin" / "python"),
                               str(ROOT / "bench" / "speculative_vllm_job.py")],
                              input=json.dumps(job), capture_output=True, text=True, env=env,
                              cwd=scratch)
    figures = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines()
               if line.startswith("RESULT ")]
    if len(figures) == len(runs):
        return figures, ""
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    return figures, (errors[-1] if errors else done.stderr[-300:]).strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 64])
    parser.add_argument("--methods", nargs="+", default=["none", "ngram", "suffix"])
    parser.add_argument("--workloads", nargs="+", default=["copy", "chat"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--vllm-venv", type=Path, default=None,
                        help="a venv with vllm-cpu: run the peer beside ours")
    parser.add_argument("--out", type=Path, default=None, help="append the lines here")
    args = parser.parse_args()
    from model.smollm2 import ensure_smollm2

    model_dir = str(ensure_smollm2())
    common = {"bench": "speculative", "commit": commit(), "model": "SmolLM2-135M-Instruct",
              "dtype": "float32", "machine": f"{os.cpu_count()}-core {platform.machine()}, "
              f"no GPU, Python {platform.python_version()}",
              "command": "python bench/speculative.py " + " ".join(sys.argv[1:])}
    lines: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)
        lines.append(line)

    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    for workload in args.workloads:
        for concurrency in args.concurrency:
            num_requests = max(4, concurrency) if concurrency < 64 else concurrency
            for method in args.methods:
                figure = run_ours(model_dir, method, workload, concurrency, num_requests,
                                  args.max_tokens)
                results[(f"ours-{method}", workload, concurrency)] = figure
                emit({**common, "system": f"ours-{method}", "workload": workload,
                      "concurrency": concurrency, **figure})
            if args.vllm_venv is not None:
                from model.tokenizer import load_model_tokenizer

                tokenizer = load_model_tokenizer(model_dir)
                runs.append({"workload": workload, "concurrency": concurrency,
                             "prompts": prompts_for(tokenizer, workload, num_requests)})
    for method in ("none", "ngram") if args.vllm_venv is not None else ():
        figures, failure = run_vllm(args.vllm_venv, model_dir, method, runs, args.max_tokens)
        for figure in figures:
            workload, concurrency = figure.pop("workload"), figure.pop("concurrency")
            results[(f"vllm-{method}", workload, concurrency)] = figure
            emit({**common, "system": f"vllm-{method}", "workload": workload,
                  "concurrency": concurrency, **figure})
        if failure:
            emit({**common, "system": f"vllm-{method}", "failed": failure})
    for (system, workload, concurrency), figure in results.items():
        plain = system.rsplit("-", 1)[0] + "-none"
        base = results.get((plain, workload, concurrency))
        if system == plain or base is None:
            continue
        ratio = {"tok_s_over_plain": round(figure["output_tok_s"] / base["output_tok_s"], 3)}
        if figure.get("tpot_ms") and base.get("tpot_ms"):
            ratio["tpot_over_plain"] = round(figure["tpot_ms"] / base["tpot_ms"], 3)
        emit({**common, "figure": "ratio", "system": system, "workload": workload,
              "concurrency": concurrency, **ratio})
    if args.out is not None:
        with args.out.open("a") as results_file:
            results_file.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
