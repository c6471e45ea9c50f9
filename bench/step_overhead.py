"""Per-step fan-out overhead: engine → every rank → rank 0's tokens back.

Prints one JSON line per figure:

* ``path=channel, step=empty``: the step channel with a step that computes nothing — the
  control path alone (pickle, one write per rank, rank 0's reply);
* ``path=channel, step=decode1``: one decode token of a tiny 2-layer model, so the ranks'
  collectives (gloo on CPU, NCCL on GPU) and sampling are included;
* ``path=ray_call_per_rank``: what the channel replaces, one Ray actor call per rank per
  step carrying the same step;
* ``figure=allreduce_bytes_per_token``: on paper, for Mistral-7B at tp=2/4/8 against
  NVLink.

Example (CPU): ``python bench/step_overhead.py --tp 1 2 --steps 2000``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TINY_CONFIG = {
    "architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 64,
    "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
    "rope_theta": 1e6, "rms_norm_eps": 1e-5,
}
NVLINK_GB_S = {"H100 NVLink4 (450 GB/s per direction)": 450.0,
               "A100 NVLink3 (300 GB/s per direction)": 300.0}


def allreduce_bytes_per_token(num_layers: int, hidden_size: int, dtype_bytes: int,
                              tp: int) -> tuple[int, float]:
    """(bytes all-reduced, bytes each GPU sends) per decoded token.

    Example (Mistral-7B, bf16, tp=2): 2 all-reduces per layer (o_proj, down) x 32 layers x
    4096 x 2 bytes = 524,288 bytes; a ring all-reduce sends 2(tp-1)/tp of that from each
    GPU = 1.0 x 524,288 bytes at tp=2, 1.5x at tp=4, 1.75x at tp=8.
    """
    data = 2 * num_layers * hidden_size * dtype_bytes
    return data, data * 2 * (tp - 1) / tp


def timed(call: Callable[[], object], steps: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"mean_us": round(statistics.fmean(samples), 1),
            "p50_us": round(samples[len(samples) // 2], 1),
            "p99_us": round(samples[int(len(samples) * 0.99)], 1)}


def measure(tp: int, model_dir: str, steps: int, common: dict[str, object]) -> None:
    import ray

    from cluster.group import WorkerGroup
    from cluster.options import ClusterOptions
    from model.runner_config import RunnerConfig
    from model.sampling_params import SamplingParams
    from model.step import NewRequest, ScheduledSequence, StepInput

    config = RunnerConfig(model=model_dir, load_format="dummy", dtype="float32",
                          device="auto", num_kv_blocks=16)
    group = WorkerGroup.start(config, tp, ClusterOptions())
    try:
        empty = StepInput([])
        prompt = list(range(10, 18))
        table = [0]
        group.execute(StepInput([ScheduledSequence("r", prompt, 0, table, True)],
                                [NewRequest("r", prompt, SamplingParams(temperature=0.0))]))
        # The same position is rewritten each time: the cost does not depend on it.
        decode = StepInput([ScheduledSequence("r", [42], len(prompt), table, True)])
        assert len(group.execute(decode).sampled) == 1
        base = {**common, "tp": tp, "device": group.resources.device, "steps": steps}
        print(json.dumps({**base, "path": "channel", "step": "empty",
                          **timed(lambda: group.execute(empty), steps, 100)}), flush=True)
        print(json.dumps({**base, "path": "channel", "step": "decode1",
                          **timed(lambda: group.execute(decode), steps, 100)}), flush=True)
        print(json.dumps({**base, "path": "ray_call_per_rank", "step": "empty",
                          **timed(lambda: ray.get([w.ping.remote(empty) for w in group.workers]),
                                  steps, 100)}), flush=True)
    finally:
        group.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--num-cpus", type=int, default=4, help="for the local Ray instance")
    args = parser.parse_args()

    for tp in (2, 4, 8):
        data, sent = allreduce_bytes_per_token(32, 4096, 2, tp)
        print(json.dumps({
            "figure": "allreduce_bytes_per_token", "model": "mistral-7b", "tp": tp,
            "bytes_all_reduced": data, "bytes_sent_per_gpu": int(sent),
            **{f"us_at_{name}": round(sent / (gbs * 1e9) * 1e6, 2)
               for name, gbs in NVLINK_GB_S.items()}}), flush=True)

    import ray
    import torch

    directory = Path(tempfile.mkdtemp(prefix="step-overhead-"))
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    ray.init(num_cpus=max(args.num_cpus, max(args.tp)), include_dashboard=False)
    common = {"bench": "step_overhead", "host": platform.node(),
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for tp in args.tp:
            measure(tp, str(directory), args.steps, common)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
