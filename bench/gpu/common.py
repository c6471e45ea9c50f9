"""What every GPU-serving figure shares: the JSON-lines results, the guard that turns a
failing or late figure into a record, and the device slug that names the results file."""

from __future__ import annotations

import datetime
import gc
import json
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device_slug(device: torch.device) -> str:
    """``nvidia-h100-80gb-hbm3`` for a CUDA device, ``cpu`` otherwise: one results file per
    kind of GPU, so figures from different machines are never mixed."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Recorder:
    """Prints each figure as one JSON line and appends it to the results file; holds the
    run's end time (``--budget-s``) that every figure checks before it starts."""

    def __init__(self, path: Path | None, common: dict[str, Any], end_time: float) -> None:
        self.path = path
        self.common = common
        self.end_time = end_time
        self.records: list[dict[str, Any]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, bench: str, system: str, value: float | None, unit: str,
             **details: Any) -> None:
        record = {"bench": bench, "system": system,
                  "value": None if value is None else round(value, 3), "unit": unit,
                  **details}
        for key, common in self.common.items():  # a figure's own detail wins
            record.setdefault(key, common)
        record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        self.records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if self.path is not None:
            # Appended line by line: a run killed at the command limit keeps what it measured.
            with self.path.open("a") as out:
                out.write(line + "\n")


def log(message: str) -> None:
    """Progress for people, on stderr: stdout carries only the JSON records."""
    print(f"[gpu_serving] {message}", file=sys.stderr, flush=True)


def is_oom(exc: BaseException) -> bool:
    # torch.OutOfMemoryError is newer than torch.cuda's; a message check catches allocators
    # that raise a plain RuntimeError.
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def guarded(recorder: Recorder, bench: str, system: str, unit: str,
            call: Callable[[], None], **details: Any) -> bool:
    """Run one figure; a failure becomes a record (skipped on OOM, error otherwise) instead
    of ending the run, so one bad figure does not cost the others' GPU time. True if ok
    (or skipped for lack of time: that is no failure of the system measured)."""
    if time.perf_counter() > recorder.end_time:
        recorder.emit(bench, system, None, unit, **details, skipped=True,
                      reason="--budget-s spent")
        return True
    try:
        call()
        return True
    except Exception as exc:  # recorded, then the next figure runs
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if is_oom(exc):
            recorder.emit(bench, system, None, unit, **details, skipped=True, reason=reason)
        else:
            traceback.print_exc(file=sys.stderr)
            recorder.emit(bench, system, None, unit, **details, error=reason)
        return False
    finally:
        # Whatever the figure left behind (an OOM's half-built tensors) goes before the next.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
