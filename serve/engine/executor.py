"""Where the model runs. The engine talks to every executor through one small interface.

``LocalExecutor`` runs one model runner in this process (tp=1); the Ray worker group of
``cluster/`` implements the same interface for tp > 1, so the scheduler has one code path.
"""

from __future__ import annotations

from typing import Protocol

from model.factory import build_runner
from model.runner_config import RunnerConfig
from model.step import StepInput, StepOutput


class Executor(Protocol):
    """Also, where the runners have a KV host tier: ``num_host_blocks`` and
    ``host_block_bytes`` (one block over every rank); see :func:`host_tier_size`."""

    num_kv_blocks: int
    max_model_len: int

    def execute(self, step: StepInput) -> StepOutput: ...

    def shutdown(self) -> None: ...


def host_tier_size(executor: Executor) -> tuple[int, int]:
    """``(num_host_blocks, host_block_bytes)``; ``(0, 0)`` for an executor without a host tier
    (the attributes are optional so that test doubles need not spell them out)."""
    return getattr(executor, "num_host_blocks", 0), getattr(executor, "host_block_bytes", 0)


class LocalExecutor:
    """One model runner in this process."""

    def __init__(self, config: RunnerConfig) -> None:
        self.runner = build_runner(config)
        self.num_kv_blocks = self.runner.num_blocks
        self.num_host_blocks = self.runner.num_host_blocks
        host_tier = self.runner.host_tier
        self.host_block_bytes = host_tier.bytes_per_block if host_tier is not None else 0
        self.model_config = self.runner.model.config
        self.max_model_len = self.model_config.max_position_embeddings

    def execute(self, step: StepInput) -> StepOutput:
        output = self.runner.execute(step)
        assert output is not None  # the local runner is always the driver
        return output

    def shutdown(self) -> None:
        self.runner.kv_caches.clear()
        self.runner.host_tier = None  # its (pinned) host memory goes with the last reference
        # The graphs hold their memory pool and pointers into the caches just cleared.
        self.runner.decode_graphs = None
