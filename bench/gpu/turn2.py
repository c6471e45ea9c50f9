"""The ``turn2`` figure: a long first prompt run to one token, then that prompt plus
``--turn2-new-tokens``. Ours: TTFT and the prefix-cache hit (``num_cached_tokens``); HF:
prefill of the new tokens on the first prompt's ``past_key_values``."""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING, Any

from bench.gpu.common import Recorder
from model.random_checkpoint import random_prompts

if TYPE_CHECKING:  # annotations only: the engine and HF are imported where they are built
    from bench.gpu.engine import OurEngine
    from bench.hf_peer import HFPeer


def turn2_prompts(args: argparse.Namespace, vocab: int) -> tuple[list[int], list[list[int]]]:
    """The first turn's prompt and ``repeats + 1`` distinct extensions of it (the first
    warms up). Distinct, so each timed turn 2 hits only the first turn's blocks."""
    base = random_prompts(1, args.turn2_base_len, vocab, seed=7)[0]
    extensions = random_prompts(args.repeats + 1, args.turn2_new_tokens, vocab, seed=8)
    return base, extensions


def ours_turn2(ours: OurEngine, rec: Recorder, args: argparse.Namespace) -> None:
    base, extensions = turn2_prompts(args, ours.vocab)
    turn1 = ours.run([base], 1)
    samples, cached = [], []
    for index, extension in enumerate(extensions):
        result = ours.run([base + extension], 1)
        if index:
            samples.append(result["ttft_s"][0] * 1e3)
            cached.append(result["num_cached_tokens"][0])
    rec.emit("ttft_turn2", "ours", statistics.median(samples), "ms",
             base_len=len(base), new_tokens=args.turn2_new_tokens,
             num_cached_tokens=min(cached),
             expected_cached_tokens=len(base) // args.block_size * args.block_size,
             samples_ms=[round(s, 2) for s in samples],
             turn1_ttft_ms=round(turn1["ttft_s"][0] * 1e3, 2), **ours.details)


def hf_turn2(peer: HFPeer, rec: Recorder, args: argparse.Namespace, vocab: int,
             common: dict[str, Any]) -> None:
    base, extensions = turn2_prompts(args, vocab)
    result = peer.turn2_ms(base, extensions)
    rec.emit("ttft_turn2", "hf", result["value"], "ms", base_len=len(base),
             new_tokens=args.turn2_new_tokens,
             num_cached_tokens=result["num_cached_tokens"],
             samples_ms=[round(s, 2) for s in result["samples_ms"]],
             method="prefill of the new tokens on past_key_values", **common)
