"""The HF transformers side: ``MistralForCausalLM`` (``bench/hf_peer.py``) loaded once, then
the same figures as ours. Failures are records, never a failed run: the peer is the
reference, not the system under test."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.gpu.common import Recorder, guarded, log
from bench.gpu.decode import hf_decode
from bench.gpu.throughput import hf_throughput
from bench.gpu.ttft import hf_ttft
from bench.gpu.turn2 import hf_turn2

if TYPE_CHECKING:  # annotations only: bench.hf_peer is imported when the peer is loaded
    from bench.hf_peer import HFPeer


def run_hf(rec: Recorder, args: argparse.Namespace, model_config: Any,
           checkpoint: Path | None, dtype: torch.dtype, ceiling: float | None,
           our_tokens: list[int] | None) -> None:
    from bench.hf_peer import HFPeer, load_hf_model

    holder: dict[str, HFPeer] = {}

    def load() -> None:
        start = time.perf_counter()
        holder["peer"] = HFPeer(load_hf_model(model_config, checkpoint, dtype, args.device),
                                args.device)
        log(f"HF model ready in {time.perf_counter() - start:.1f} s")

    guarded(rec, "hf_load", "hf", "", load)
    if "peer" not in holder:  # failed, or skipped for lack of time
        return
    peer = holder["peer"]
    vocab = model_config.vocab_size
    import transformers

    common = {"attn_implementation": "sdpa", "transformers": transformers.__version__}

    if "decode" in args.figures:
        # Token agreement means something only when both loaded the same checkpoint (the
        # smoke run); random-initialised weights differ between the two.
        reference = our_tokens if checkpoint is not None else None
        guarded(rec, "decode_b1", "hf", "tok/s",
                lambda: hf_decode(peer, rec, args, vocab, ceiling, reference, common))
    if "throughput" in args.figures:
        for batch in args.hf_batches:
            guarded(rec, "throughput", "hf", "output tok/s",
                    lambda b=batch: hf_throughput(peer, rec, args, vocab, b, common),
                    batch=batch)
    if "ttft" in args.figures:
        for length in args.ttft_lens:
            guarded(rec, "ttft_cold", "hf", "ms",
                    lambda n=length: hf_ttft(peer, rec, args, vocab, n, common),
                    prompt_len=length)
    if "turn2" in args.figures:
        guarded(rec, "ttft_turn2", "hf", "ms",
                lambda: hf_turn2(peer, rec, args, vocab, common))
