"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Triton decides between interpreter and compiler when it is first imported. Without a GPU
# its kernels can only run interpreted (on CPU tensors), so this is set before any test
# module can import triton, whatever the collection order.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from model.random_checkpoint import write_tiny_checkpoint  # noqa: E402
from model.smollm2 import ensure_smollm2  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2-135M-Instruct HF checkpoint, in the default cache dir so that repeated
    runs (and CI, which caches $MISTRAL_SERVE_CACHE_DIR) convert it only once."""
    return ensure_smollm2()


# One Ray cluster for the whole session. Exactly 4 CPUs: a worker group or Serve replica
# that leaks its resources makes a later test fail instead of passing by luck.
NUM_CPUS = 4
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)  # before ray.init: the raylet and its workers inherit them
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=NUM_CPUS, include_dashboard=False)
    yield
    if started:
        from ray import serve

        serve.shutdown()  # Serve first, then Ray
        ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes with a 32K context, for the long-prompt tests."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("long"), max_position_embeddings=32768)
