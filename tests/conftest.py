"""Fixtures shared across the test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.smollm2 import ensure_smollm2


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2-135M-Instruct HF checkpoint, in the default cache dir so that repeated
    runs (and CI, which caches $MISTRAL_SERVE_CACHE_DIR) convert it only once."""
    return ensure_smollm2()
