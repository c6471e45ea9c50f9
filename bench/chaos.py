"""Faults under load on the real service, with figures: one JSON line per fault.

Each case starts the service (tiny random Mistral on CPU, 2 LLMServer and 2 Ingress
replicas, Redis), puts ``--streams`` concurrent streams on it, injects the fault, and
reports how the streams in flight ended (counts by status), the time from the fault to the
first and last error, the time until the service answered again at full strength, KV
blocks left allocated afterwards (must be 0) and client messages that showed internals
(must be 0). tests/chaos/ holds the same faults as pass/fail tests; this prints figures.

    python bench/chaos.py                      # every fault
    python bench/chaos.py --faults replica_kill worker_kill --streams 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.prefix_routing import free_port  # noqa: E402
from serve.replicas import call_replicas, running_replica_actors  # noqa: E402

API_KEY = "bench-chaos"
APP = "mistral"


def replicas(deployment: str) -> dict[str, Any]:
    return running_replica_actors(APP, deployment)


def leaked_blocks(timeout_s: float = 30.0) -> int:
    """KV blocks still allocated once every replica is idle (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = call_replicas(APP, "LLMServer", "stats").values()
        held = sum(s["num_kv_blocks"] - s["num_free_kv_blocks"] for s in stats)
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def recovered_after(target: str, deployment: str, count: int, since: float) -> float:
    """Seconds from ``since`` until ``count`` replicas run and a request succeeds."""
    from serve.client import LLMClient

    while True:
        try:
            if len(replicas(deployment)) == count:
                with LLMClient(target, api_key=API_KEY, timeout_s=30) as client:
                    client.generate("probe", max_tokens=1)
                return time.monotonic() - since
        except Exception:
            pass
        if time.monotonic() - since > 300:
            return float("inf")
        time.sleep(0.5)


def record(fault: str, outcomes: list[Any], fault_at: float, recovery_s: float,
           **extra: Any) -> dict[str, Any]:
    from serve.client.load import leaks, tally

    # Errors the fault caused: refusals of a full queue before it are not counted.
    failed = [o.ended - fault_at for o in outcomes
              if o.status not in ("ok", "cancelled") and o.ended >= fault_at]
    in_flight = sum(1 for o in outcomes if o.started <= fault_at <= o.ended)
    return {"bench": "chaos", "fault": fault, "streams": len(outcomes), "in_flight": in_flight,
            "outcomes": tally(outcomes),
            "first_error_s": round(min(failed), 3) if failed else None,
            "last_error_s": round(max(failed), 3) if failed else None,
            "recovery_s": round(recovery_s, 2), "blocks_leaked": leaked_blocks(),
            "messages_with_internals": len(leaks(outcomes)), **extra}


def under_load(target: str, specs: list[Any], inject: Callable[[], None],
               after_s: float) -> tuple[list[Any], float]:
    from serve.client.load import run_streams

    async def scenario() -> tuple[list[Any], float]:
        load = asyncio.create_task(run_streams(target, specs, API_KEY, timeout_s=180))
        await asyncio.sleep(after_s)
        at = time.monotonic()
        await asyncio.to_thread(inject)
        return await load, at

    return asyncio.run(scenario())


def specs_for(count: int, max_tokens: int, tag: str) -> list[Any]:
    from serve.client.load import StreamSpec

    return [StreamSpec(f"{tag} {i} " * (1 + i % 7), max_tokens) for i in range(count)]


def kill_replica(target: str, deployment: str, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    victim = next(iter(replicas(deployment).values()))
    outcomes, at = under_load(target, specs_for(args.streams, args.max_tokens, deployment),
                              lambda: ray.kill(victim, no_restart=True), 1.5)
    recovery = recovered_after(target, deployment, 2, at)
    return record(f"{deployment.lower()}_kill", outcomes, at, recovery)


def kill_worker(target: str, args: argparse.Namespace) -> dict[str, Any]:
    from ray._private import state

    pids = [a["Pid"] for a in state.actors().values()
            if a["ActorClassName"] == "TPWorker" and a["State"] == "ALIVE"]
    outcomes, at = under_load(target, specs_for(args.streams, args.max_tokens, "tp"),
                              lambda: os.kill(pids[-1], signal.SIGKILL), 1.5)
    recovery = recovered_after(target, "LLMServer", 1, at)
    return record("worker_kill", outcomes, at, recovery, tensor_parallel_size=2)


def restart_redis(target: str, redis: Any, args: argparse.Namespace) -> dict[str, Any]:
    def outage() -> None:
        redis.stop()
        time.sleep(2.0)
        redis.start()

    outcomes, at = under_load(target, specs_for(args.streams, args.max_tokens, "redis"),
                              outage, 0.5)
    return record("redis_restart", outcomes, at, 2.0)


def cancel_storm(target: str, args: argparse.Namespace) -> dict[str, Any]:
    from serve.client.load import StreamSpec, run_streams

    rng = random.Random(0)
    specs = [StreamSpec(f"storm {i} " * rng.randrange(1, 40), 200,
                        cancel_after_s=rng.uniform(0, 3)) for i in range(4 * args.streams)]
    start = time.monotonic()
    outcomes = asyncio.run(run_streams(target, specs, API_KEY))
    return record("cancel_storm", outcomes, start, 0.0)


def burst(target: str, args: argparse.Namespace) -> dict[str, Any]:
    from serve.client.load import run_streams

    capacity = 2 * (args.max_num_seqs + args.max_waiting)
    start = time.monotonic()
    outcomes = asyncio.run(run_streams(target, specs_for(4 * capacity, 24, "burst"),
                                       API_KEY))
    refused = [o.ended - start for o in outcomes if o.status == "RESOURCE_EXHAUSTED"]
    return record("burst_4x_capacity", outcomes, start, 0.0, capacity=capacity,
                  slowest_refusal_s=round(max(refused), 3) if refused else None)


def start(model: str, args: argparse.Namespace, **overrides: Any) -> str:
    from serve.app import start_serve
    from serve.config import ServeConfig

    values: dict[str, Any] = dict(
        model=model, replicas=2, ingress_replicas=2, api_key=API_KEY, grpc_port=free_port(),
        http_port=free_port(), accelerator="cpu", index_resync_s=1.0,
        engine={"num_kv_blocks": 1024, "dtype": "float32", "max_num_seqs": args.max_num_seqs,
                "max_waiting_requests": args.max_waiting})
    values.update(overrides)
    config = ServeConfig(**values)
    start_serve(config)
    return f"localhost:{config.grpc_port}"


class Redis:
    """A redis-server that can be killed (SIGKILL, like a crashed pod) and brought back on
    the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="chaos-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def main() -> None:
    faults = ["redis_restart", "cancel_storm", "burst", "replica_kill", "ingress_kill",
              "worker_kill"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="+", choices=faults, default=faults)
    parser.add_argument("--streams", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--max-waiting", type=int, default=16)
    args = parser.parse_args()

    import ray
    from ray import serve

    from model.random_checkpoint import write_tiny_checkpoint

    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    model = str(write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="chaos-"))))
    ray.init(num_cpus=4, include_dashboard=False)
    redis = Redis()
    try:
        if set(args.faults) - {"worker_kill"}:
            target = start(model, args, redis_url=redis.url)
            cases: dict[str, Callable[[], dict[str, Any]]] = {
                "redis_restart": lambda: restart_redis(target, redis, args),
                "cancel_storm": lambda: cancel_storm(target, args),
                "burst": lambda: burst(target, args),
                "replica_kill": lambda: kill_replica(target, "LLMServer", args),
                "ingress_kill": lambda: kill_replica(target, "Ingress", args),
            }
            for fault in [f for f in faults if f in args.faults and f in cases]:
                print(json.dumps(cases[fault]()), flush=True)
            serve.shutdown()
        if "worker_kill" in args.faults:
            target = start(model, args, replicas=1, ingress_replicas=1,
                           tensor_parallel_size=2)
            print(json.dumps(kill_worker(target, args)), flush=True)
            serve.shutdown()
    finally:
        redis.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
