"""The ``roofline`` figure: device copy bandwidth, matmul rate, and the batch-1 decode
ceiling (bandwidth / weight bytes) that the decode figures are reported against. The
measurements themselves are ``bench/roofline.py``."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.gpu.common import Recorder, guarded


def run_roofline(rec: Recorder, args: argparse.Namespace, model_config: Any,
                 dtype: torch.dtype) -> float | None:
    """Emits the three roofline records; returns the decode ceiling in tok/s, or None when
    the bandwidth could not be measured (the decode figures then report no fraction)."""
    from bench.roofline import copy_bandwidth_gb_s, count_parameters, matmul_tflops

    out: dict[str, float] = {}

    def bandwidth() -> None:
        out["gb_s"] = copy_bandwidth_gb_s(args.device, args.copy_bytes)
        rec.emit("copy_bandwidth", "roofline", out["gb_s"], "GB/s",
                 bytes=args.copy_bytes, counted="read+write")

    def matmul() -> None:
        value = matmul_tflops(args.device, dtype, args.matmul_size)
        rec.emit("matmul", "roofline", value, "TFLOP/s", size=args.matmul_size,
                 dtype=str(dtype).removeprefix("torch."))

    guarded(rec, "copy_bandwidth", "roofline", "GB/s", bandwidth)
    guarded(rec, "matmul", "roofline", "TFLOP/s", matmul)
    if "gb_s" not in out:
        return None
    count = count_parameters(model_config)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    weight_bytes = count.total * dtype_bytes
    ceiling = out["gb_s"] * 1e9 / weight_bytes
    rec.emit("decode_ceiling_b1", "roofline", ceiling, "tok/s", params=count.total,
             weight_bytes=weight_bytes,
             ceiling_without_embedding=round(
                 out["gb_s"] * 1e9 / (count.read_per_decode_step * dtype_bytes), 1),
             bandwidth_gb_s=round(out["gb_s"], 1))
    return ceiling
