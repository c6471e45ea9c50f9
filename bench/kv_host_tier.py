"""Turn-2 TTFT of a conversation whose KV the device evicted: restored from the host tier
against recomputed, in one run (and a device-cache hit for reference).

Each trial: turn 1 of a ``--prompt-len``-token conversation, then ``--fillers`` prompts as
long, which evict every block of it from a device pool sized for about one conversation;
then turn 2 (turn 1, its reply and ``--turn-len`` new tokens), timed to its first token.
The engines: ``host`` (that pool plus a host tier), ``recompute`` (the pool alone) and
``device`` (a pool that never evicts). Then the constants of the router's cost model on
this machine: prefill seconds per token (the recompute TTFT over its tokens) and copy
seconds per token each way (one conversation's blocks moved by the host tier alone, timed
on the ``host`` engine once it is idle; the difference of the host and device TTFTs is
smaller than their noise). Prints one JSON line per figure. Example (CPU, the embedded
SmolLM2 checkpoint):

    python bench/kv_host_tier.py --prompt-len 2048 --trials 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model.random_checkpoint import random_prompts
from model.sampling_params import SamplingParams
from model.step import BlockCopies

sys.path.insert(0, str(Path(__file__).parent))
from offline_throughput import bench_model  # noqa: E402

BLOCK_SIZE = 16
FIRST_TOKEN = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def time_to_first_token(llm: Any, prompt: list[int]) -> tuple[float, int]:
    """Seconds to the first token of ``prompt`` alone on the engine, and its cached tokens."""
    start = time.perf_counter()
    output = llm.generate(prompt, FIRST_TOKEN)[0]
    return time.perf_counter() - start, output.num_cached_tokens


def trial(llm: Any, args: argparse.Namespace, vocab: int, seed: int) -> tuple[float, int]:
    turn1, *fillers = random_prompts(1 + args.fillers, args.prompt_len, vocab, seed=seed)
    reply = SamplingParams(temperature=0.0, max_tokens=args.reply_len, ignore_eos=True)
    answer = llm.generate(turn1, reply)[0].outputs[0].token_ids
    llm.generate(fillers, FIRST_TOKEN)
    new_turn = random_prompts(1, args.turn_len, vocab, seed=seed + 1000)[0]
    return time_to_first_token(llm, turn1 + answer + new_turn)


def copy_seconds(llm: Any, num_blocks: int, repeats: int = 5) -> tuple[float, float]:
    """Median seconds to offload, and to restore, ``num_blocks`` blocks through the host tier
    of an idle in-process engine. The copies overwrite cached blocks of both tiers, so the
    prefix cache is dropped afterwards."""
    runner = llm.engine.executor.runner
    tier, caches = runner.host_tier, runner.kv_caches
    pairs = [(block, block) for block in range(num_blocks)]
    timings: dict[str, list[float]] = {"offload": [], "restore": []}
    for _ in range(repeats):
        for direction in timings:
            copies = BlockCopies(**{direction: pairs})
            if tier.stream is not None:
                torch.cuda.synchronize()
            start = time.perf_counter()
            tier.copy(copies, caches)
            if tier.stream is not None:
                torch.cuda.synchronize()
            timings[direction].append(time.perf_counter() - start)
    assert llm.engine.block_manager.reset_prefix_cache()
    return statistics.median(timings["offload"]), statistics.median(timings["restore"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint dir; default: SmolLM2")
    parser.add_argument("--tiny", action="store_true",
                        help="a random 2-layer Mistral (hidden 64) written to a temp dir")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--reply-len", type=int, default=16)
    parser.add_argument("--turn-len", type=int, default=32)
    parser.add_argument("--fillers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from model.config import ModelConfig
    from model.kv_cache import KVCacheSpec
    from model.parallel import SINGLE
    from serve.llm import LLM

    args.model = bench_model(args.model, args.tiny)
    model_config = ModelConfig.from_pretrained(args.model)
    spec = KVCacheSpec.for_model(model_config, SINGLE, BLOCK_SIZE, getattr(torch, args.dtype))
    conversation_len = args.prompt_len + args.reply_len + args.turn_len
    # Room for one conversation (and its fillers, one at a time), not for two.
    device_blocks = -(-conversation_len // BLOCK_SIZE) + 8
    host_bytes = (args.trials + 1) * (1 + args.fillers) * device_blocks * spec.bytes_per_block
    common = {"dtype": args.dtype, "max_num_batched_tokens": max(2048, conversation_len),
              "max_model_len": conversation_len + 64}
    engines = {
        "host": {"num_kv_blocks": device_blocks, "kv_host_memory": host_bytes},
        "recompute": {"num_kv_blocks": device_blocks},
        "device": {"num_kv_blocks": device_blocks * (args.trials + 1) * (args.fillers + 2)},
    }
    figures: dict[str, float] = {}
    cached: dict[str, int] = {}
    base = {"model": Path(args.model).name, "prompt_len": args.prompt_len,
            "turn2_len": conversation_len, "dtype": args.dtype, "trials": args.trials,
            "device": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    for name, options in engines.items():
        llm = LLM(args.model, **common, **options)
        try:
            vocab = llm.engine.model_config.vocab_size
            trial(llm, args, vocab, seed=10_000)  # warm-up
            timings = [trial(llm, args, vocab, seed=seed) for seed in range(args.trials)]
            stats = llm.engine.stats()
            if name == "host":
                offload_s, restore_s = copy_seconds(llm, device_blocks - 8)
        finally:
            llm.shutdown()
        ttft = statistics.median(seconds for seconds, _ in timings)
        figures[name], cached[name] = ttft, timings[-1][1]
        record = {**base, "system": name, "turn2_ttft_ms": round(ttft * 1e3, 1),
                  "cached_tokens": cached[name], "device_blocks": options["num_kv_blocks"]}
        if name == "host":
            record.update(restored_blocks=stats.num_restored_blocks,
                          offloaded_blocks=stats.num_offloaded_blocks,
                          restored_mib=round(stats.kv_bytes_restored / 2**20, 1))
        print(json.dumps(record), flush=True)
    ratio = figures["host"] / figures["recompute"]
    print(json.dumps({**base, "figure": "host_over_recompute_ttft", "ratio": round(ratio, 3),
                      "goal": 0.2, "met": ratio <= 0.2}), flush=True)
    prefill = figures["recompute"] / conversation_len
    copied_tokens = (device_blocks - 8) * BLOCK_SIZE
    restore, offload = restore_s / copied_tokens, offload_s / copied_tokens
    print(json.dumps({**base, "figure": "cost_model",
                      "prefill_us_per_token": round(prefill * 1e6, 2),
                      "restore_us_per_token": round(restore * 1e6, 3),
                      "offload_us_per_token": round(offload * 1e6, 3),
                      "restore_gb_per_s": round(spec.bytes_per_block / BLOCK_SIZE / restore / 1e9, 2),
                      "copy_to_prefill": round(restore / prefill, 4)}), flush=True)


if __name__ == "__main__":
    main()
