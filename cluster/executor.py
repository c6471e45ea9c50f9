"""The engine's executor for tp > 1: a Ray worker group behind the ``Executor`` protocol.

Failure is part of the contract: when a rank dies, hangs past the step timeout or fails its
step, ``execute`` raises :class:`WorkerGroupError` at once (never waits on the dead rank), the
surviving ranks are killed so their devices free up, and the executor stays dead: every
later call raises the same retryable error, and ``check_health`` tells Serve to replace the
replica.
"""

from __future__ import annotations

import logging
import os

import ray

from cluster.channel import ChannelError
from cluster.group import WorkerGroup
from cluster.options import ClusterOptions
from cluster.placement import local_num_cpus
from model.runner_config import RunnerConfig
from model.step import StepInput, StepOutput

logger = logging.getLogger(__name__)

class WorkerGroupError(RuntimeError):
    """The tensor-parallel workers failed; in-flight requests should be retried elsewhere."""


RETRY_HINT = "retry the request on a healthy replica (this one must restart its workers)"


def ensure_ray(tp: int, options: ClusterOptions) -> None:
    """Join the Ray cluster this process belongs to, or start a local one."""
    if ray.is_initialized():
        return
    if options.ray_address:
        ray.init(address=options.ray_address)
        return
    ray.init(num_cpus=local_num_cpus(tp, options.cpus_per_worker, os.cpu_count() or 1),
             include_dashboard=False)


class RayExecutor:
    def __init__(self, config: RunnerConfig, tp_size: int,
                 options: ClusterOptions | None = None) -> None:
        self.options = options or ClusterOptions.from_env()
        ensure_ray(tp_size, self.options)
        self.group = WorkerGroup.start(config, tp_size, self.options)
        self.num_kv_blocks = self.group.num_kv_blocks
        self.max_model_len = self.group.max_model_len
        self.num_host_blocks = self.group.num_host_blocks
        self.host_block_bytes = self.group.host_block_bytes
        self.dead_reason: str | None = None
        logger.info("tensor-parallel group of %d ranks on %s: %d KV blocks",
                    self.group.tp_size, self.group.resources.device, self.num_kv_blocks)

    def execute(self, step: StepInput) -> StepOutput:
        if self.dead_reason is not None:
            raise WorkerGroupError(self.dead_reason)
        try:
            return self.group.execute(step)
        except ChannelError as exc:
            self._fail(f"tensor-parallel worker failed: {exc}")
            raise WorkerGroupError(self.dead_reason) from exc

    def check_health(self) -> None:
        """Raise :class:`WorkerGroupError` unless every rank answers within the health timeout."""
        if self.dead_reason is not None:
            raise WorkerGroupError(self.dead_reason)
        try:
            self.group.ping(self.options.health_timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            self._fail(f"tensor-parallel worker failed its health check: {exc}")
            raise WorkerGroupError(self.dead_reason) from exc

    def _fail(self, message: str) -> None:
        self.dead_reason = f"{message}; {RETRY_HINT}"
        logger.error("%s", self.dead_reason)
        self.group.kill_workers()

    def shutdown(self) -> None:
        self.group.shutdown()
