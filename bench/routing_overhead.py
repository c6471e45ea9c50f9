"""Routing overhead: ``match_prefix`` plus the router's scoring step, per prompt length.

For each index (in-process, and Redis on a redis-server this script starts on a free port)
and each prompt length, 4 replicas hold the first 100%, 50%, 25% and 0% of the prompt's
blocks among ``--background-blocks`` blocks of other conversations, so ``match_prefix``
walks the whole prompt (the worst case); scoring picks the longest prefix, then the lowest
load. Prints one JSON line per (index, figure, prompt length). Example:

    python bench/routing_overhead.py --iterations 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.kv_events import BlockStored
from serve.prefix_index import (
    InProcessPrefixIndex,
    PrefixIndex,
    leading_block_counts,
    open_prefix_index,
)
from serve.routing.policy import ReplicaLoad, RoutingPolicy, choose_replicas

REPLICAS = ["replica-0", "replica-1", "replica-2", "replica-3"]


POLICY = RoutingPolicy()


def choose_replica(counts: dict[str, int], loads: dict[str, int]) -> str:
    """The router's own ranking (serve/routing/policy.py) over these loads; each replica
    takes 64 ongoing requests, so the loads drawn here stay under the cap."""
    replicas = [ReplicaLoad(replica, load, 64) for replica, load in loads.items()]
    return choose_replicas(None, counts, replicas, POLICY).replica_ids[0]


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return round(1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(1e3 * ordered[-1], 4)}


def timed(call: Callable[[], object], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server (nothing persisted) on a free port; yields its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def populate(index: PrefixIndex, background_blocks: int, rng: random.Random) -> None:
    """Other conversations: 64-block chains spread over the replicas, in batches of 4096."""
    batch: list[BlockStored] = []
    for start in range(0, background_blocks, 64):
        hashes = [rng.randbytes(16) for _ in range(min(64, background_blocks - start))]
        batch.append(BlockStored(hashes, None, 16 * len(hashes)))
        if len(batch) == 64:
            index.publisher(rng.choice(REPLICAS)).publish(batch)
            batch = []
    if batch:
        index.publisher(REPLICAS[0]).publish(batch)


def pipelined_match(client: Any, key_prefix: bytes, hashes: list[bytes]) -> dict[str, int]:
    """The alternative to the Lua script: one pipeline of SMEMBERS, counted in Python."""
    pipe = client.pipeline(transaction=False)
    for block_hash in hashes:
        pipe.smembers(key_prefix + block_hash)
    holders = [{member.decode() for member in members} for members in pipe.execute()]
    return leading_block_counts(holders)


def make_figures(
    index: PrefixIndex, tokens: list[int], block_size: int, client: Any, rng: random.Random
) -> dict[str, Callable[[], object]]:
    """The timed calls for one prompt; ``client`` (Redis only) adds the pipelined variant."""
    hashes = hash_prompt_blocks(tokens, block_size)
    miss = [rng.randbytes(16) for _ in hashes]
    stored = [BlockStored(hashes, None, block_size * len(hashes))]
    publisher = index.publisher("replica-3")

    def route(prompt_hashes: list[bytes]) -> str:
        loads = {replica: rng.randrange(16) for replica in REPLICAS}
        return choose_replica(index.match_prefix(prompt_hashes), loads)

    figures: dict[str, Callable[[], object]] = {
        "match_and_score_hit": lambda: route(hashes),  # full walk: replica-0 holds it all
        "match_and_score_miss": lambda: route(miss),
        "hash_prompt_blocks": lambda: hash_prompt_blocks(tokens, block_size),
    }
    if client is not None:
        block_prefix = f"{index.key_prefix}:b:".encode()  # type: ignore[attr-defined]
        figures["match_and_score_hit_pipelined_smembers"] = lambda: choose_replica(
            pipelined_match(client, block_prefix, hashes), {r: 0 for r in REPLICAS}
        )
    # Last: from here on replica-3 holds the prompt too.
    figures["publish_one_batch"] = lambda: publisher.publish(stored)
    return figures


def bench_index(
    name: str, index: PrefixIndex, args: argparse.Namespace, client: Any = None
) -> None:
    rng = random.Random(0)
    populate(index, args.background_blocks, rng)
    common = {"bench": "routing_overhead", "index": name, "block_size": args.block_size,
              "iterations": args.iterations, "background_blocks": args.background_blocks,
              "num_replicas": len(REPLICAS), "host": platform.node(), "cpus": os.cpu_count()}  # fmt: skip
    for prompt_tokens in args.prompt_tokens:
        tokens = [rng.randrange(32000) for _ in range(prompt_tokens)]
        hashes = hash_prompt_blocks(tokens, args.block_size)
        num_blocks = len(hashes)
        for position, replica in enumerate(REPLICAS[:3]):
            held = hashes[: num_blocks >> position]
            index.publisher(replica).publish([BlockStored(held, None, args.block_size * len(held))])
        expected = {REPLICAS[i]: num_blocks >> i for i in range(3)}
        assert index.match_prefix(hashes) == expected, index.match_prefix(hashes)
        for figure, call in make_figures(index, tokens, args.block_size, client, rng).items():
            call()  # warm up (script load, connection)
            samples = timed(call, args.iterations)
            line = {**common, "figure": figure, "prompt_tokens": prompt_tokens,
                    "num_blocks": num_blocks, **percentiles_ms(samples)}  # fmt: skip
            print(json.dumps(line), flush=True)
        index.publisher("replica-3").resync([])  # empty again for the next prompt length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--background-blocks", type=int, default=100_000)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--only", choices=["in_process", "redis"])
    args = parser.parse_args()

    if args.only != "redis":
        index: PrefixIndex = InProcessPrefixIndex()
        bench_index("in_process", index, args)
        index.close()
    if args.only != "in_process":
        with nullcontext(args.redis_url) if args.redis_url else redis_server() as url:
            import redis

            client = redis.Redis.from_url(url)
            index = open_prefix_index(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
            bench_index("redis", index, args, client)
            index.close()
            client.close()


if __name__ == "__main__":
    main()
