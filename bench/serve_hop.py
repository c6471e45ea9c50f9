"""What one Ray Serve call costs, with nothing of ours in it: the floor under the service's
per-request CPU.

Two bare deployments on a local Ray: ``Caller`` makes ``--calls`` concurrent calls to
``Callee`` through a deployment handle, the way the Ingress calls the LLMServer (a
streaming call that yields nothing, and a unary one for comparison); the callee only waits
``--hold-ms``, as a request would while its engine runs. Prints one JSON line per kind of
call: the CPU milliseconds per call in the caller's process and in the callee's, from
their /proc times. A request through the service crosses two such calls (proxy to Ingress,
Ingress to LLMServer), so ``python bench/service_throughput.py --max-tokens 1`` (per-request
CPU of each service process) minus these figures is what our own code costs per request.

    python bench/serve_hop.py
    python bench/serve_hop.py --calls 512 --hold-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil

# A prompt of 128 token ids and an id: about what a request carries to the LLMServer.
PAYLOAD = {"prompt_token_ids": list(range(128)), "request_id": "0" * 32}


def build_app(hold_s: float) -> Any:
    from ray import serve

    @serve.deployment(max_ongoing_requests=100_000)
    class Callee:
        async def stream(self, request: dict[str, Any]) -> AsyncIterator[None]:
            await asyncio.sleep(hold_s)
            return
            yield  # an async generator that yields nothing

        async def unary(self, request: dict[str, Any]) -> None:
            await asyncio.sleep(hold_s)

    @serve.deployment(max_ongoing_requests=100_000)
    class Caller:
        def __init__(self, callee: Any) -> None:
            self.unary_handle = callee
            self.stream_handle = callee.options(stream=True)

        async def run(self, kind: str, calls: int) -> float:
            async def one() -> None:
                if kind == "stream":
                    async for _ in self.stream_handle.stream.remote(PAYLOAD):
                        pass
                else:
                    await self.unary_handle.unary.remote(PAYLOAD)

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(calls)))
            return time.perf_counter() - start

    return Caller.bind(Callee.bind())


def process_cpu_s(name: str) -> float:
    """CPU seconds so far of the Ray actor process whose command line names ``name``."""
    for process in psutil.process_iter(["cmdline"]):
        if name in " ".join(process.info["cmdline"] or []):
            times = process.cpu_times()
            return times.user + times.system
    raise RuntimeError(f"no process named {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=256)
    parser.add_argument("--hold-ms", type=float, default=500.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False)
    try:
        handle = serve.run(build_app(args.hold_ms / 1e3), name="hop")
        for kind in ("stream", "unary") * args.rounds:
            handle.run.remote(kind, 16).result()  # warm up
            before = {side: process_cpu_s(f"hop:{side}") for side in ("Caller", "Callee")}
            wall = handle.run.remote(kind, args.calls).result()
            after = {side: process_cpu_s(f"hop:{side}") for side in ("Caller", "Callee")}
            per_call = {f"{side.lower()}_cpu_ms_per_call":
                        round(1e3 * (after[side] - before[side]) / args.calls, 3)
                        for side in before}
            print(json.dumps({"bench": "serve_hop", "call": kind, "calls": args.calls,
                              "hold_ms": args.hold_ms, "seconds": round(wall, 3), **per_call,
                              "cpus": os.cpu_count(), "ray": ray.__version__,
                              "machine": platform.machine()}), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
