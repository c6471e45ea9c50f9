"""How a tensor-parallel worker group runs, and the one module of `cluster` that reads
environment variables.

The engine builds its executor from a :class:`~model.factory.RunnerConfig` and a size alone, so
the knobs that only matter for Ray (timeouts, CPUs per rank) come from here: defaults that
suit one machine, overridable per deployment through the environment, or passed explicitly
by tests and benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

STEP_TIMEOUT_ENV = "MISTRAL_SERVE_STEP_TIMEOUT_S"
START_TIMEOUT_ENV = "MISTRAL_SERVE_WORKER_START_TIMEOUT_S"
CPUS_PER_WORKER_ENV = "MISTRAL_SERVE_CPUS_PER_WORKER"
RAY_ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class ClusterOptions:
    """``step_timeout_s`` bounds one step end to end: a worker that dies is noticed at once
    (its socket closes), one that hangs after this long. ``start_timeout_s`` bounds the
    placement group reservation, the process-group rendezvous and the weight loading.
    ``cpus_per_worker`` is what each rank reserves on a CPU-only cluster (GPU ranks reserve
    one GPU and no CPU, so that they fit Serve's ``{"GPU": 1}`` bundles)."""

    step_timeout_s: float = 60.0
    start_timeout_s: float = 300.0
    health_timeout_s: float = 10.0
    cpus_per_worker: float = 1.0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        for name in ("step_timeout_s", "start_timeout_s", "health_timeout_s",
                     "cpus_per_worker"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")

    @classmethod
    def from_env(cls) -> ClusterOptions:
        defaults = cls()
        return cls(
            step_timeout_s=_float_env(STEP_TIMEOUT_ENV, defaults.step_timeout_s),
            start_timeout_s=_float_env(START_TIMEOUT_ENV, defaults.start_timeout_s),
            cpus_per_worker=_float_env(CPUS_PER_WORKER_ENV, defaults.cpus_per_worker),
            ray_address=os.environ.get(RAY_ADDRESS_ENV) or None,
        )


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds or CPUs, got {raw!r}") from None
