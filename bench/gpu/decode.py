"""The ``decode`` figure: batch-1 greedy decode tok/s (EOS ignored), decode steps only."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bench.gpu.common import Recorder
from model.random_checkpoint import random_prompts

if TYPE_CHECKING:  # annotations only: the engine and HF are imported where they are built
    from bench.gpu.engine import OurEngine
    from bench.hf_peer import HFPeer


def ours_decode(ours: OurEngine, rec: Recorder, args: argparse.Namespace,
                ceiling: float | None) -> list[int]:
    """Returns the generated tokens, for the smoke run's ours-vs-HF agreement check."""
    prompt = random_prompts(1, args.decode_prompt_len, ours.vocab, seed=1)
    ours.run(random_prompts(1, args.decode_prompt_len, ours.vocab, seed=2), 8)  # warm-up
    result = ours.run(prompt, args.decode_tokens)
    times = result["times_0"]
    # From the first token to the last: decode steps only, the prefill is excluded.
    rate = (len(times) - 1) / (times[-1] - times[0])
    rec.emit("decode_b1", "ours", rate, "tok/s", prompt_len=args.decode_prompt_len,
             new_tokens=args.decode_tokens, ms_per_token=round(1e3 / rate, 3),
             fraction_of_ceiling=round(rate / ceiling, 3) if ceiling else None, **ours.details)
    return result["tokens_0"]


def hf_decode(peer: HFPeer, rec: Recorder, args: argparse.Namespace, vocab: int,
              ceiling: float | None, our_tokens: list[int] | None,
              common: dict[str, Any]) -> None:
    """``our_tokens``: ours' decode of the same prompt when both ran the same weights (the
    smoke run), else None."""
    prompt = random_prompts(1, args.decode_prompt_len, vocab, seed=1)[0]
    result = peer.decode_batch1(prompt, args.decode_tokens)
    extra = {}
    if our_tokens is not None:
        # Same weights, same prompt, greedy: the tokens should agree (a check that both
        # systems run the same model).
        agree = next((i for i, (a, b) in enumerate(
            zip(our_tokens, result["tokens"], strict=False)) if a != b),
            min(len(our_tokens), len(result["tokens"])))
        extra["tokens_agreeing_with_ours"] = agree
    rate = result["value"]
    rec.emit("decode_b1", "hf", rate, "tok/s", prompt_len=args.decode_prompt_len,
             new_tokens=args.decode_tokens, ms_per_token=round(1e3 / rate, 3),
             fraction_of_ceiling=round(rate / ceiling, 3) if ceiling else None,
             method="manual loop, DynamicCache", **extra, **common)
