"""The service against its own engine: one workload offline and through the service, in
one run, so the ratio shows what the request path costs.

Offline: ``LLM.generate`` with every request submitted at once. Service: ``mistral-serve``'s
app on a local Ray (1 LLMServer replica, 1 Ingress), the same requests as concurrent
streams over gRPC (the asyncio SDK) and over HTTP (OpenAI's streaming completions API).
Prints one JSON line per path: output tok/s, TTFT p50/p99, inter-token latency p50/p99,
end-to-end latency p50/p99 (from sending a request to the end of its stream),
the ratio of each service path to offline, and each service process's CPU seconds (with
how long its busiest thread, the engine's step thread in the LLMServer, waited for a
core). Default: 256 streams, 128-token prompts, 64 new tokens, a tiny random Mistral (2
layers, full 32K vocabulary) on CPU.

    python bench/service_throughput.py
    python bench/service_throughput.py --streams 64 --prompt-len 128 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.prefix_routing import free_port  # noqa: E402
from bench.process_cpu import ProcessCpu  # noqa: E402
from model.random_checkpoint import random_prompts, write_tiny_checkpoint  # noqa: E402
from serve.client.load import Outcome, StreamSpec, percentile, run_streams  # noqa: E402

# Where the service's CPU goes, process by process (bench/process_cpu.py); Serve's proxy
# is off the data path now (disabled), so only older runs have it.
SERVICE_PROCESSES = ("LLMServer", "Ingress", "ProxyActor")
# torch threads in a CPU LLMServer replica (OMP_NUM_THREADS, which Ray sets from num_cpus).
REPLICA_THREADS = 1


def latency_figures(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    tokens = sum(o.tokens for o in outcomes)
    ttft = [o.ttft_s for o in outcomes if o.ttft_s is not None]
    e2e = [o.ended - o.started for o in outcomes if o.status == "ok"]
    gaps = [b - a for o in outcomes
            for a, b in zip(o.token_times, o.token_times[1:], strict=False)]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1e3 * value, 2)

    return {"tok_per_s": round(tokens / seconds, 1), "tokens": tokens,
            "seconds": round(seconds, 3), "failed": sum(o.status != "ok" for o in outcomes),
            "ttft_p50_ms": ms(percentile(ttft, 0.5)), "ttft_p99_ms": ms(percentile(ttft, 0.99)),
            "itl_p50_ms": ms(percentile(gaps, 0.5)), "itl_p99_ms": ms(percentile(gaps, 0.99)),
            "e2e_p50_ms": ms(percentile(e2e, 0.5)), "e2e_p99_ms": ms(percentile(e2e, 0.99))}


def offline(model: str, prompts: list[list[int]], args: argparse.Namespace,
            threads: int) -> dict[str, Any]:
    import torch

    from model.sampling_params import SamplingParams
    from serve.llm import LLM

    torch.set_num_threads(threads)
    with LLM(model, dtype="float32", num_kv_blocks=args.num_kv_blocks,
             max_num_seqs=args.max_num_seqs) as llm:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        llm.generate(prompts[:4], params)  # warm up
        # The engine's own loop, so that each request's first token is timed as the
        # service's are: all requests arrive at once.
        engine = llm.engine
        start = time.perf_counter()
        for i, prompt in enumerate(prompts):
            engine.add_request(f"bench-{i}", prompt, params)
        first: dict[str, float] = {}
        ended: list[float] = []
        tokens = 0
        while engine.has_unfinished_requests():
            for output in engine.step():
                new = len(output.outputs[0].delta_token_ids)
                tokens += new
                if new and output.request_id not in first:
                    first[output.request_id] = time.perf_counter() - start
                if output.finished:
                    ended.append(time.perf_counter() - start)
        seconds = time.perf_counter() - start
    ttft = list(first.values())

    def ms(values: list[float], q: float) -> float:
        return round(1e3 * (percentile(values, q) or 0.0), 2)

    return {"tok_per_s": round(tokens / seconds, 1), "tokens": tokens,
            "seconds": round(seconds, 3), "torch_threads": threads,
            "ttft_p50_ms": ms(ttft, 0.5), "ttft_p99_ms": ms(ttft, 0.99),
            "e2e_p50_ms": ms(ended, 0.5), "e2e_p99_ms": ms(ended, 0.99)}


async def http_stream(session: Any, url: str, prompt: list[int], max_tokens: int) -> Outcome:
    outcome = Outcome("ok", started=time.monotonic())
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with session.post(url, json=body) as response:
        if response.status != 200:
            outcome.status, outcome.details = str(response.status), await response.text()
            return outcome
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):  # the last event: the exact count
                outcome.tokens = event["usage"]["completion_tokens"]
            if event["choices"] and event["choices"][0].get("text"):
                now = time.monotonic()  # one event carries what was ready: maybe >1 token
                outcome.first_token = outcome.first_token or now
                outcome.token_times.append(now)
    outcome.ended = time.monotonic()
    return outcome


async def over_http(port: int, prompts: list[list[int]], max_tokens: int) -> list[Outcome]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/completions"
    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=limits,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        return list(await asyncio.gather(*(http_stream(session, url, p, max_tokens)
                                           for p in prompts)))


def service(model: str, prompts: list[list[int]], args: argparse.Namespace
            ) -> dict[str, dict[str, Any]]:
    import ray
    from ray import serve

    from serve.app import start_serve
    from serve.config import ServeConfig

    config = ServeConfig(model=model, grpc_port=free_port(), http_port=free_port(),
                         accelerator="cpu",
                         engine={"num_kv_blocks": args.num_kv_blocks, "dtype": "float32",
                                 "max_num_seqs": args.max_num_seqs})
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False)
    start_serve(config)
    figures = {}
    try:
        target = f"localhost:{config.grpc_port}"
        specs = [StreamSpec(p, args.max_tokens) for p in prompts]
        asyncio.run(run_streams(target, specs[:4], timeout_s=600))  # warm up
        with ProcessCpu(SERVICE_PROCESSES) as cpu:
            start = time.perf_counter()
            outcomes = asyncio.run(run_streams(target, specs, timeout_s=600))
            seconds = time.perf_counter() - start
        figures["grpc"] = {**latency_figures(outcomes, seconds), "process_cpu": cpu.figures()}
        # Prompts of their own: the gRPC run's are in the replica's prefix cache now.
        http_prompts = random_prompts(len(prompts), len(prompts[0]), 32000, seed=1)
        with ProcessCpu(SERVICE_PROCESSES) as cpu:
            start = time.perf_counter()
            outcomes = asyncio.run(over_http(config.http_port, http_prompts, args.max_tokens))
            seconds = time.perf_counter() - start
        figures["http_openai"] = {**latency_figures(outcomes, seconds),
                                  "process_cpu": cpu.figures()}
    finally:
        serve.shutdown()
        ray.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: tiny random Mistral)")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--num-kv-blocks", type=int, default=4096)
    args = parser.parse_args()
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    model = args.model or str(write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="svc-"))))
    prompts = random_prompts(args.streams, args.prompt_len, 32000, seed=0)
    common = {"bench": "service_throughput", "streams": args.streams,
              "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
              "max_num_seqs": args.max_num_seqs, "cpus": os.cpu_count()}
    # The offline engine with torch's own thread count, and with the LLMServer replica's: Ray
    # gives an actor that books under one CPU one OpenMP thread, which is also what a CPU
    # replica should use beside the proxy, Ingress and clients (a second thread on a busy
    # machine makes every matmul wait for a descheduled thread).
    import torch

    default_threads = torch.get_num_threads()
    engines = {}
    for threads in sorted({default_threads, REPLICA_THREADS}, reverse=True):
        engines[threads] = offline(model, prompts, args, threads)
        print(json.dumps({**common, "path": "offline_engine", **engines[threads]}), flush=True)
    torch.set_num_threads(default_threads)
    for path, figures in service(model, prompts, args).items():
        ratios = {f"ratio_to_offline_{threads}_threads":
                  round(figures["tok_per_s"] / engine["tok_per_s"], 3)
                  for threads, engine in engines.items()}
        print(json.dumps({**common, "path": path, **figures,
                          "ratio_to_offline": ratios[f"ratio_to_offline_{default_threads}_threads"],
                          **ratios}), flush=True)


if __name__ == "__main__":
    main()
