"""Engine host time per step, and the step period when the model takes a fixed time.

The executor here computes nothing: it answers every sampling sequence with a token drawn
from the vocabulary, after sleeping ``--step-ms`` (a sleep releases the GIL, as a wait on
the device does). So what is timed is the engine's own work: scheduling, the step message,
token bookkeeping, detokenization with the Mistral v1 tokenizer, stop strings, outputs.

Prints JSON lines:

* ``loop=serial``: ``LLMEngine.step`` called in a loop, null executor (``--step-ms 0``):
  host ms per decode step, p50/p90, at ``--seqs`` running sequences;
* ``loop=overlapped``: ``LLMEngine.advance`` in a loop on a step thread, executor sleeping
  ``--step-ms``: the step period p50/p90 (outputs are dropped, nothing consumes them), and
  beside it the period of the executor alone, back to back (its own work and a sleep's late
  wake-up), so their difference is the engine's work left on the critical path;
* ``loop=service``: the service's engine loop (``AsyncLLMEngine``, one asyncio consumer per
  request), with the executor sleeping ``--step-ms``: the step period p50/p90 beside the
  executor's own time, so ``period - step_ms`` is the host work left on the critical path.

Example: ``python bench/engine_overhead.py --seqs 256 --step-ms 5``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from typing import Any

from model.config import ModelConfig
from model.sampling_params import SamplingParams
from model.step import SampledToken, ScheduledSequence, StepInput, StepOutput
from model.tokenizer_mistral import MistralV1Tokenizer
from serve.engine.async_engine import AsyncLLMEngine
from serve.engine.config import EngineConfig
from serve.engine.engine import LLMEngine
from serve.engine.step_runner import ThreadedStepRunner

VOCAB = 32000


class TimedNullExecutor:
    """Samples random tokens; records when each step with ``--seqs`` sequences started."""

    def __init__(self, num_kv_blocks: int, max_model_len: int, step_s: float,
                 full_batch: int, seed: int = 0) -> None:
        self.num_kv_blocks = num_kv_blocks
        self.max_model_len = max_model_len
        self.step_s = step_s
        self.full_batch = full_batch
        # Tokens drawn once, handed out in turn: the executor's own work stays small, as a
        # device's is for the host.
        rng = random.Random(seed)
        self.tokens = [rng.randrange(3, VOCAB) for _ in range(1 << 16)]
        self.next_token = 0
        self.full_step_starts: list[float] = []

    def execute(self, step: StepInput) -> StepOutput:
        if len(step.sequences) == self.full_batch and all(
                len(seq.token_ids) == 1 for seq in step.sequences):
            self.full_step_starts.append(time.perf_counter())
        if self.step_s:
            time.sleep(self.step_s)
        start = self.next_token
        self.next_token = (start + len(step.sequences)) % (len(self.tokens) - len(step.sequences))
        tokens = self.tokens
        return StepOutput([SampledToken(seq.request_id, tokens[start + i])
                           for i, seq in enumerate(step.sequences) if seq.sample])

    def shutdown(self) -> None:
        pass


def build_engine(args: argparse.Namespace, step_s: float) -> tuple[LLMEngine, TimedNullExecutor]:
    tokenizer = MistralV1Tokenizer.from_file()
    blocks_per_seq = -(-(args.prompt_len + args.max_tokens) // 16) + 1
    executor = TimedNullExecutor(blocks_per_seq * args.seqs + 64, 32768, step_s, args.seqs)
    model_config = ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=32768)
    config = EngineConfig(model="null", max_num_seqs=args.seqs,
                          max_num_batched_tokens=max(2048, args.prompt_len * 16))
    return LLMEngine(config, executor, tokenizer, model_config), executor


def params(args: argparse.Namespace) -> SamplingParams:
    stop = ["\n\nUser:", "<|end|>"] if args.stop else None
    return SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, stop=stop)


def prompts(args: argparse.Namespace) -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(3, VOCAB) for _ in range(args.prompt_len)] for _ in range(args.seqs)]


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50": round(statistics.median(values), 3),
            "p90": round(values[int(0.9 * (len(values) - 1))], 3)}


def serial(args: argparse.Namespace) -> dict[str, Any]:
    engine, executor = build_engine(args, 0.0)
    for i, prompt in enumerate(prompts(args)):
        engine.add_request(f"r{i}", prompt, params(args))
    host_ms = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        before = len(executor.full_step_starts)
        engine.step()
        if len(executor.full_step_starts) > before:
            host_ms.append((time.perf_counter() - start) * 1e3)
    return {"loop": "serial", "seqs": args.seqs, "step_ms": 0.0, "decode_steps": len(host_ms),
            "host_ms_per_step": percentiles(host_ms)}


def period_figures(starts: list[float], step_ms: float) -> dict[str, Any]:
    periods = [(b - a) * 1e3 for a, b in zip(starts, starts[1:], strict=False)]
    period = percentiles(periods)
    return {"decode_steps": len(starts), "step_period_ms": period,
            "host_ms_on_critical_path_p50": round(period["p50"] - step_ms, 3)}


def executor_alone(args: argparse.Namespace) -> float:
    """The step period of the executor run back to back on a full decode step, no engine:
    the floor of the overlapped loop's period (its own work, and how late a sleep wakes)."""
    executor = TimedNullExecutor(1, 32768, args.step_ms / 1e3, args.seqs)
    step = StepInput([ScheduledSequence(f"r{i}", [5], args.prompt_len, [0], True)
                      for i in range(args.seqs)])
    for _ in range(50):
        executor.execute(step)
    return period_figures(executor.full_step_starts, args.step_ms)["step_period_ms"]["p50"]


def overlapped(args: argparse.Namespace) -> dict[str, Any]:
    engine, executor = build_engine(args, args.step_ms / 1e3)
    engine.step_runner = ThreadedStepRunner(executor)
    for i, prompt in enumerate(prompts(args)):
        engine.add_request(f"r{i}", prompt, params(args))
    launched = None
    try:
        while True:
            launched, _ = engine.advance(launched)
            if launched is None and not engine.has_unfinished_requests():
                break
    finally:
        engine.step_runner.shutdown()
    figures = period_figures(executor.full_step_starts, args.step_ms)
    floor = executor_alone(args)
    return {"loop": "overlapped", "seqs": args.seqs, "step_ms": args.step_ms, **figures,
            "executor_alone_period_ms": floor,
            "engine_ms_on_critical_path_p50": round(figures["step_period_ms"]["p50"] - floor, 3)}


async def consume(engine: AsyncLLMEngine, prompt: list[int], sampling: SamplingParams,
                  request_id: str) -> int:
    tokens = 0
    async for output in engine.generate(prompt, sampling, request_id):
        tokens += len(output.outputs[0].delta_token_ids)
    return tokens


async def service_loop(args: argparse.Namespace) -> dict[str, Any]:
    engine, executor = build_engine(args, args.step_ms / 1e3)
    front = AsyncLLMEngine(engine)
    try:
        start = time.perf_counter()
        counts = await asyncio.gather(*(consume(front, prompt, params(args), f"r{i}")
                                        for i, prompt in enumerate(prompts(args))))
        seconds = time.perf_counter() - start
    finally:
        front.shutdown()
    return {"loop": "service", "seqs": args.seqs, "step_ms": args.step_ms,
            **period_figures(executor.full_step_starts, args.step_ms),
            "tokens": sum(counts), "tok_s": round(sum(counts) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--stop", action="store_true", help="give every request stop strings")
    parser.add_argument("--loops", nargs="+", default=["serial", "overlapped", "service"],
                        choices=["serial", "overlapped", "service"])
    args = parser.parse_args()
    host = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    if "serial" in args.loops:
        print(json.dumps({**serial(args), "stop_strings": args.stop, **host}), flush=True)
    if "overlapped" in args.loops:
        print(json.dumps({**overlapped(args), "stop_strings": args.stop, **host}), flush=True)
    if "service" in args.loops:
        print(json.dumps({**asyncio.run(service_loop(args)), "stop_strings": args.stop, **host}),
              flush=True)


if __name__ == "__main__":
    main()
