"""One real Ray cluster for the whole session, and the checkpoints the TP tests share.

Starting Ray costs seconds, so every test in this package uses the one cluster; each test
stops the worker groups it starts, and the cluster has exactly 4 CPUs so that a group that
leaks its placement group makes the next tp=4 test fail instead of passing by luck.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config, write_tiny_checkpoint

# 44M parameters, 171 MiB in fp32, most of it in the vocabulary-parallel embedding and LM
# head: large enough that a rank holding half of it shows in its resident memory.
BIG_CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536,
                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=64)


@pytest.fixture(scope="session")
def tp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 query heads and 2 KV heads: tp=2 splits both, tp=4 replicates each KV head twice."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tp"))


@pytest.fixture(scope="session")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("big")
    save_hf_checkpoint(directory, tiny_mistral_config(**BIG_CONFIG))
    return directory
