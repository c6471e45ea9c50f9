"""The ``ttft`` figure: time to first token of cold prompts (``--ttft-lens``). Ours:
add_request to the first token through the engine; HF: prefill forward + first argmax."""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING, Any

from bench.gpu.common import Recorder
from model.random_checkpoint import random_prompts

if TYPE_CHECKING:  # annotations only: the engine and HF are imported where they are built
    from bench.gpu.engine import OurEngine
    from bench.hf_peer import HFPeer


def cold_prompts(args: argparse.Namespace, length: int, vocab: int) -> list[list[int]]:
    """``repeats + 1`` prompts of ``length`` (the first warms up this length), each with its
    own seed so that none hits the prefix cache; both systems get the same ones."""
    return [random_prompts(1, length, vocab, seed=1000 * length + rep)[0]
            for rep in range(args.repeats + 1)]


def ours_ttft(ours: OurEngine, rec: Recorder, args: argparse.Namespace, length: int) -> None:
    samples, cached = [], []
    for rep, prompt in enumerate(cold_prompts(args, length, ours.vocab)):
        result = ours.run([prompt], 1)
        if rep:  # rep 0 warmed up
            samples.append(result["ttft_s"][0] * 1e3)
            cached.append(result["num_cached_tokens"][0])
    rec.emit("ttft_cold", "ours", statistics.median(samples), "ms", prompt_len=length,
             samples_ms=[round(s, 2) for s in samples], num_cached_tokens=max(cached),
             **ours.details)


def hf_ttft(peer: HFPeer, rec: Recorder, args: argparse.Namespace, vocab: int, length: int,
            common: dict[str, Any]) -> None:
    result = peer.prefill_ms(cold_prompts(args, length, vocab))  # it skips prompts[0] too
    rec.emit("ttft_cold", "hf", result["value"], "ms", prompt_len=length,
             samples_ms=[round(s, 2) for s in result["samples_ms"]],
             method="prefill forward", **common)
