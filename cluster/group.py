"""Start, drive and stop the tp ranks of one model copy.

Start: validate (the split, the devices), place the ranks, let rank 0 pick the rendezvous,
init every rank at once (they meet in the process group), then open the step channel. Any
failure on the way kills what was started and releases what was reserved.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.channel import TOKEN_SIZE, StepChannel
from cluster.options import ClusterOptions
from cluster.placement import Placement, WorkerResources, acquire_placement, check_model_split
from cluster.worker import ComputeLogits, ShardReport, TPWorker, WorkerInfo, WorkerInit
from model.config import ModelConfig
from model.runner_config import RunnerConfig
from model.step import StepInput, StepOutput


def get_fail_fast(refs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """``ray.get`` of all ``refs``, raising as soon as any one fails. A plain ``ray.get`` of
    the list would wait for the healthy ranks first, and they may be blocked in a collective
    on the failed one until the process-group timeout."""
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        remaining = deadline - time.monotonic()
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(remaining, 0))
        if not ready:
            raise TimeoutError(f"{what}: {len(pending)} of {len(refs)} ranks did not finish "
                               f"within {timeout_s:.0f}s")
        try:
            ray.get(ready[0])
        except RayTaskError as exc:
            # Re-raised as the rank's own exception type (CheckpointError, ...), so callers
            # can catch what they would catch in a single process.
            raise exc.as_instanceof_cause() from None
    return ray.get(list(refs))


@dataclass
class WorkerGroup:
    workers: list[Any]  # ActorHandle[TPWorker], rank order
    placement: Placement
    resources: WorkerResources
    channel: StepChannel
    infos: list[WorkerInfo]
    closed: bool = field(default=False)

    @property
    def tp_size(self) -> int:
        return len(self.workers)

    @property
    def num_kv_blocks(self) -> int:
        return self.infos[0].num_kv_blocks

    @property
    def max_model_len(self) -> int:
        return self.infos[0].max_model_len

    @property
    def num_host_blocks(self) -> int:
        return self.infos[0].num_host_blocks

    @property
    def host_block_bytes(self) -> int:
        """Bytes one host block holds over every rank (each holds its shard of it)."""
        return sum(info.host_block_bytes for info in self.infos)

    @classmethod
    def start(cls, config: RunnerConfig, tp: int, options: ClusterOptions) -> WorkerGroup:
        check_model_split(ModelConfig.from_pretrained(config.model), tp)
        placement, resources = acquire_placement(tp, config.device, options.cpus_per_worker,
                                                 options.start_timeout_s)
        workers: list[Any] = []
        try:
            actor = ray.remote(TPWorker)
            for rank in range(tp):
                strategy = PlacementGroupSchedulingStrategy(
                    placement_group=placement.group,
                    placement_group_bundle_index=placement.bundle_indices[rank],
                    # Ranks start no tasks of their own; none should claim their bundles.
                    placement_group_capture_child_tasks=False)
                workers.append(actor.options(
                    num_cpus=0 if resources.use_gpu else resources.num_cpus,
                    num_gpus=1 if resources.use_gpu else 0,
                    max_restarts=0,  # a restarted rank has lost its group: restart the group
                    scheduling_strategy=strategy,
                ).remote(rank, tp))
            (master_addr, master_port), = get_fail_fast(
                [workers[0].rendezvous_address.remote()], options.start_timeout_s,
                "starting the tensor-parallel workers")
            token = secrets.token_bytes(TOKEN_SIZE)
            init = WorkerInit(config, resources.device, master_addr, master_port,
                              options.start_timeout_s, token)
            infos: list[WorkerInfo] = get_fail_fast(
                [w.init.remote(init) for w in workers], options.start_timeout_s,
                "loading the model shards")
            channel = StepChannel([info.address for info in infos], token,
                                  options.step_timeout_s)
        except BaseException:
            _kill(workers)
            placement.release()
            raise
        return cls(workers, placement, resources, channel, infos)

    def execute(self, step: StepInput) -> StepOutput:
        output: StepOutput = self.channel.call(step)
        return output

    def compute_logits(self, step: StepInput) -> torch.Tensor:
        """Rank 0's logits for the step's sampled rows, nothing sampled (parity checks)."""
        logits: torch.Tensor = self.channel.call(ComputeLogits(step))
        return logits

    def ping(self, timeout_s: float) -> list[int]:
        return get_fail_fast([w.ping.remote() for w in self.workers], timeout_s,
                             "health check")

    def reports(self, timeout_s: float = 60.0) -> list[ShardReport]:
        return get_fail_fast([w.report.remote() for w in self.workers], timeout_s,
                             "shard report")

    def kill_workers(self) -> None:
        """Stop every rank now. After one rank fails the others are stuck in a collective
        that will never complete; killing them frees their devices for a new group."""
        self.channel.close()
        _kill(self.workers)

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.kill_workers()
        self.placement.release()


def _kill(workers: list[Any]) -> None:
    for worker in workers:
        # Already dead, or Ray is shutting down: nothing is left to stop.
        with contextlib.suppress(Exception):
            ray.kill(worker, no_restart=True)
