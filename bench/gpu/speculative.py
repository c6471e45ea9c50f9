"""The ``speculative`` figure: batch-1 greedy decode with k = 5 drafts per step over the same
decode without drafts, on one engine built with speculation (the plain run opts out per
request, so all runs share weights, KV cache and CUDA graphs).

The device machine has random weights only, so a model-free proposer would find nothing to
propose. The drafts here replay the plain run's own answer instead: as it was (every
draft accepted: the best a proposer can do) and shifted by one token (every draft rejected:
the cost of verification and of the policy backing off). On CUDA a step with drafts runs
eagerly (the decode graphs hold one-token rows), and these two bounds say what that costs.
What real text accepts is bench/speculative.py's figure, on CPU.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.gpu.common import Recorder, log
from bench.gpu.engine import OurEngine
from model.random_checkpoint import random_prompts

SPECULATIVE_CONFIG = {"method": "ngram", "num_speculative_tokens": 5}


class ReplayProposer:
    """Drafts from a known answer to one prompt: its next tokens (``hit``), or each of them
    plus one (every draft wrong)."""

    def __init__(self, prompt_len: int, answer: list[int], vocab: int, hit: bool) -> None:
        self.prompt_len = prompt_len
        self.answer = answer
        self.vocab = vocab
        self.hit = hit

    def propose(self, request: Any, num_tokens: int) -> list[int]:
        done = len(request.token_ids) - self.prompt_len
        drafts = self.answer[done:done + num_tokens]
        return drafts if self.hit else [(token + 1) % self.vocab for token in drafts]

    def finish(self, request: Any) -> None:
        pass


def ours_speculative(rec: Recorder, args: argparse.Namespace, model: str, load_format: str,
                     tokenizer: tuple[str, str], cuda_graphs: str | None) -> None:
    start = time.perf_counter()
    ours = OurEngine(args, model, load_format, tokenizer, cuda_graphs,
                     speculative_config=SPECULATIVE_CONFIG)
    log(f"speculative engine ready in {time.perf_counter() - start:.1f} s")
    speculator = ours.engine.speculator
    try:
        prompt = random_prompts(1, args.decode_prompt_len, ours.vocab, seed=3)[0]
        ours.run([prompt[::-1]], 8, num_speculative_tokens=0)  # warm-up

        def decode(k: int | None) -> tuple[float, list[int], int, int]:
            before = ours.engine.stats()
            result = ours.run([prompt], args.decode_tokens, num_speculative_tokens=k)
            after = ours.engine.stats()
            times = result["times_0"]
            return (1e3 * (times[-1] - times[0]) / (args.decode_tokens - 1),
                    result["tokens_0"],
                    after.num_spec_draft_tokens - before.num_spec_draft_tokens,
                    after.num_spec_accepted_tokens - before.num_spec_accepted_tokens)

        plain_ms, answer, _, _ = decode(0)
        original = speculator.proposer
        for case, hit in (("all_accepted", True), ("all_rejected", False)):
            speculator.proposer = ReplayProposer(len(prompt), answer, ours.vocab, hit)
            try:
                spec_ms, tokens, drafted, accepted = decode(None)
            finally:
                speculator.proposer = original
            rec.emit("spec_decode_b1", "ours", round(spec_ms / plain_ms, 3),
                     "TPOT with drafts / without", case=case,
                     prompt_len=args.decode_prompt_len, new_tokens=args.decode_tokens,
                     speculative_config=SPECULATIVE_CONFIG,
                     plain_ms_per_token=round(plain_ms, 3), spec_ms_per_token=round(spec_ms, 3),
                     draft_tokens=drafted, accepted_tokens=accepted,
                     same_tokens_as_plain=tokens == answer, **ours.details)
    finally:
        ours.shutdown()
