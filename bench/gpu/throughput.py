"""The ``throughput`` figure: ``--requests`` requests of ``--prompt-len`` + ``--output-len``
tokens. Ours: all submitted at once (continuous batching); HF: static ``generate`` batches."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bench.gpu.common import Recorder
from model.random_checkpoint import random_prompts

if TYPE_CHECKING:  # annotations only: the engine and HF are imported where they are built
    from bench.gpu.engine import OurEngine
    from bench.hf_peer import HFPeer


def ours_throughput(ours: OurEngine, rec: Recorder, args: argparse.Namespace) -> None:
    # Warm-up at the same batch shape with few tokens: every prefill chunk and decode batch
    # size of the timed run has been compiled / autotuned once.
    ours.run(random_prompts(args.requests, args.prompt_len, ours.vocab, seed=10), 4)
    prompts = random_prompts(args.requests, args.prompt_len, ours.vocab, seed=11)
    result = ours.run(prompts, args.output_len)
    seconds = result["seconds"]
    ttft = sorted(result["ttft_s"])
    rec.emit("throughput", "ours", args.requests * args.output_len / seconds, "output tok/s",
             requests=args.requests, prompt_len=args.prompt_len, output_len=args.output_len,
             seconds=round(seconds, 3),
             total_tok_s=round(args.requests * (args.prompt_len + args.output_len) / seconds, 1),
             ttft_p50_ms=round(ttft[len(ttft) // 2] * 1e3, 1),
             ttft_max_ms=round(ttft[-1] * 1e3, 1),
             num_cached_tokens=sum(result["num_cached_tokens"]), **ours.details)


def hf_throughput(peer: HFPeer, rec: Recorder, args: argparse.Namespace, vocab: int,
                  batch: int, common: dict[str, Any]) -> None:
    # Seed 11, as ours' timed run: with --hf-prompt-len equal to --prompt-len both systems
    # serve the very same requests.
    prompts = random_prompts(args.requests, args.hf_prompt_len, vocab, seed=11)
    result = peer.throughput_static(prompts, args.output_len, batch)
    rec.emit("throughput", "hf", result["value"], "output tok/s", batch=batch,
             requests=args.requests, prompt_len=args.hf_prompt_len,
             output_len=args.output_len, seconds=round(result["seconds"], 3),
             method="static batches through generate", **common)
