"""What the prefix-index tests share: a conversation's block keys, store events, and the
index's log lines."""

from __future__ import annotations

import random

import pytest

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.kv_events import BlockStored

BLOCK_SIZE = 16
LOGGER = "serve.prefix_index"


def conversation(num_blocks: int, seed: int = 0) -> list[bytes]:
    """Chained keys of a prompt of ``num_blocks`` full blocks (plus a partial one)."""
    rng = random.Random(seed)
    tokens = [rng.randrange(32000) for _ in range(num_blocks * BLOCK_SIZE + 5)]
    return hash_prompt_blocks(tokens, BLOCK_SIZE)


def stored(hashes: list[bytes], parent: bytes | None = None) -> BlockStored:
    return BlockStored(list(hashes), parent, len(hashes) * BLOCK_SIZE)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]
