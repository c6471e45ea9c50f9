"""Tiny random Mistral checkpoints with the real v1 tokenizer, shared by the engine tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model.tokenizer import bundled_mistral_v1_path
from tests.model.checkpoints import save_hf_checkpoint, tiny_mistral_config


def write_tiny_checkpoint(directory: Path, **overrides: object) -> Path:
    """A 2-layer Mistral with the full 32,000-token vocabulary, so the bundled v1
    SentencePiece model tokenizes for it."""
    config = tiny_mistral_config(vocab_size=32000, **overrides)
    save_hf_checkpoint(directory, config)
    shutil.copy(bundled_mistral_v1_path(), directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes with a 32K context, for the long-prompt tests."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("long"), max_position_embeddings=32768)
