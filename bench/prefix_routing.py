"""Prefix-cache hit rate of a multi-turn workload on 2 replicas, prefix routing on vs off.

Each conversation resends its whole history every turn, without a session id, so only the
router's prefix lookup can keep it where its KV is. Prints one JSON line per mode and the
ratio. Example (CPU, tiny random Mistral):

    python bench/prefix_routing.py --conversations 8 --turns 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_mode(model: str, prefix_routing: bool, conversations: int, turns: int) -> dict:
    from ray import serve

    from serve.app import start_serve
    from serve.client import LLMClient
    from serve.config import ServeConfig

    config = ServeConfig(model=model, replicas=2, prefix_routing=prefix_routing,
                         grpc_port=free_port(), http_port=free_port(), accelerator="cpu",
                         engine={"num_kv_blocks": 2048, "dtype": "float32"})
    start_serve(config)
    prompt_tokens = cached_tokens = 0
    latencies = []
    try:
        with LLMClient(f"localhost:{config.grpc_port}", timeout_s=120) as client:
            histories: list[list[dict[str, str]]] = [[] for _ in range(conversations)]
            for turn in range(turns):
                for c, history in enumerate(histories):  # interleaved, like real traffic
                    history.append({"role": "user", "content": f"Conversation {c}, turn "
                                    f"{turn}: please continue the story with more detail."})
                    start = time.perf_counter()
                    reply = client.chat(history, max_tokens=32, temperature=0.0,
                                        ignore_eos=True)
                    latencies.append(time.perf_counter() - start)
                    history.append({"role": "assistant", "content": reply.text})
                    if turn > 0:  # the first turn has nothing to reuse anywhere
                        prompt_tokens += reply.usage.prompt_tokens
                        cached_tokens += reply.usage.cached_tokens
    finally:
        serve.shutdown()
    latencies.sort()
    return {"prefix_routing": prefix_routing, "conversations": conversations, "turns": turns,
            "replicas": 2, "hit_rate": round(cached_tokens / max(prompt_tokens, 1), 3),
            "prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens,
            "request_p50_ms": round(1000 * latencies[len(latencies) // 2], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint dir; default: tiny random")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    sys.path.insert(0, str(Path(__file__).parent))
    from offline_throughput import write_tiny_mistral

    model = args.model or write_tiny_mistral()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        results = [run_mode(model, on, args.conversations, args.turns) for on in (True, False)]
    finally:
        ray.shutdown()
    for result in results:
        print(json.dumps(result), flush=True)
    on, off = results
    print(json.dumps({"figure": "hit_rate_prefix_over_load",
                      "ratio": round(on["hit_rate"] / max(off["hit_rate"], 1e-9), 2)}))


if __name__ == "__main__":
    main()
