"""Our engine's figures: the engine is loaded once, runs every chosen figure, and is torn
down before HF loads, so each system has the whole GPU."""

from __future__ import annotations

import argparse
import gc
import time

import torch

from bench.gpu.common import Recorder, guarded, log
from bench.gpu.decode import ours_decode
from bench.gpu.engine import OurEngine
from bench.gpu.throughput import ours_throughput
from bench.gpu.ttft import ours_ttft
from bench.gpu.turn2 import ours_turn2


def run_ours(rec: Recorder, args: argparse.Namespace, model: str, load_format: str,
             tokenizer: tuple[str, str], cuda_graphs: str | None, ceiling: float | None
             ) -> tuple[bool, list[int] | None]:
    """(every figure ok, the batch-1 decode's tokens for the HF agreement check)."""
    tokens: list[int] | None = None
    holder: dict[str, OurEngine] = {}

    def load() -> None:
        start = time.perf_counter()
        holder["ours"] = OurEngine(args, model, load_format, tokenizer, cuda_graphs)
        log(f"engine ready in {time.perf_counter() - start:.1f} s: {holder['ours'].details}")

    loaded = guarded(rec, "engine_load", "ours", "", load)
    if "ours" not in holder:  # failed, or skipped for lack of time
        return loaded, None
    ours = holder.pop("ours")
    ok = True
    try:
        if "decode" in args.figures:
            def decode() -> None:
                nonlocal tokens
                tokens = ours_decode(ours, rec, args, ceiling)
            ok &= guarded(rec, "decode_b1", "ours", "tok/s", decode)
        if "throughput" in args.figures:
            ok &= guarded(rec, "throughput", "ours", "output tok/s",
                          lambda: ours_throughput(ours, rec, args))
        if "ttft" in args.figures:
            for length in args.ttft_lens:
                ok &= guarded(rec, "ttft_cold", "ours", "ms",
                              lambda n=length: ours_ttft(ours, rec, args, n), prompt_len=length)
        if "turn2" in args.figures:
            ok &= guarded(rec, "ttft_turn2", "ours", "ms", lambda: ours_turn2(ours, rec, args))
    finally:
        ours.shutdown()  # drops the engine, and with it the weights and the KV cache
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
            log(f"engine torn down; {torch.cuda.memory_allocated(args.device) / 2**30:.2f} GiB "
                "still allocated")
    return ok, tokens
