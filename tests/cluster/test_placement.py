"""Where the ranks run, and bad configurations failing at start with what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.executor import RayExecutor
from cluster.options import ClusterOptions
from cluster.placement import (
    ClusterConfigError,
    WorkerResources,
    check_capacity,
    check_model_split,
    local_num_cpus,
)
from model.config import PRESETS
from model.runner_config import RunnerConfig
from model.step import NewRequest, ScheduledSequence, StepInput
from serve import SamplingParams

MISTRAL = PRESETS["mistral-7b-v0.2"]  # 32 query heads, 8 KV heads, FFN 14336


# ---- pure checks ----------------------------------------------------------------------

@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16, 32])
def test_mistral_splits_at_powers_of_two(tp: int) -> None:
    check_model_split(MISTRAL, tp)


def test_tp_not_dividing_the_heads_says_which_sizes_work() -> None:
    with pytest.raises(ClusterConfigError) as error:
        check_model_split(MISTRAL, 3)
    assert "tensor_parallel_size=3 cannot split this model" in str(error.value)
    assert "number of attention heads (32) is not divisible by tensor_parallel_size (3)" \
        in str(error.value)
    assert "Valid tensor_parallel_size values for it: 1, 2, 4, 8, 16, 32" in str(error.value)


def test_kv_heads_that_cannot_be_replicated_evenly_are_rejected() -> None:
    # 12 query heads split at tp=12, but 8 KV heads cannot be shared evenly by 12 ranks.
    config = MISTRAL.replace(num_attention_heads=24, hidden_size=3072,
                             intermediate_size=12 * 1024)
    with pytest.raises(ClusterConfigError, match="Valid tensor_parallel_size values for it: "
                                                  "1, 2, 4, 8, 24"):
        check_model_split(config, 12)


def test_more_gpus_than_the_largest_node_has() -> None:
    with pytest.raises(ClusterConfigError) as error:
        check_capacity(8, WorkerResources(use_gpu=True, num_cpus=1), node_capacity=4)
    assert str(error.value).startswith("tensor_parallel_size=8 needs 8 GPUs on one node")
    assert "lower tensor_parallel_size to at most 4 or add a node with 8 GPUs" in str(error.value)


def test_cpu_capacity_counts_cpus_per_rank() -> None:
    check_capacity(8, WorkerResources(use_gpu=False, num_cpus=0.5), node_capacity=4)
    with pytest.raises(ClusterConfigError, match="lower tensor_parallel_size to at most 2"):
        check_capacity(3, WorkerResources(use_gpu=False, num_cpus=2), node_capacity=4)


def test_a_local_ray_gets_enough_cpus_for_the_ranks() -> None:
    assert local_num_cpus(tp=4, num_cpus=1.0, machine_cpus=2) == 4
    assert local_num_cpus(tp=2, num_cpus=1.0, machine_cpus=16) == 16


# ---- at start, on the real cluster ----------------------------------------------------

def num_placement_groups() -> int:
    return len(ray.util.placement_group_table())


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(("tp", "device", "message"), [
    (3, "cpu", "number of attention heads (32) is not divisible by tensor_parallel_size (3)"),
    (16, "cpu", "tensor_parallel_size=16 needs 16 CPUs on one node (1 per rank on a CPU-only "
                "cluster) but the largest node in the Ray cluster has 4; lower "
                "tensor_parallel_size to at most 4"),
    (2, "cuda", "device='cuda' but the Ray cluster has no GPUs; use device='cpu'"),
])
def test_bad_configurations_fail_before_reserving_anything(tp: int, device: str,
                                                           message: str) -> None:
    before = num_placement_groups()
    config = RunnerConfig(model="mistral-7b-v0.2", device=device, load_format="dummy")
    with pytest.raises(ClusterConfigError) as error:
        RayExecutor(config, tp)
    assert message in str(error.value)
    assert num_placement_groups() == before


@pytest.mark.usefixtures("ray_cluster")
def test_resources_held_elsewhere_time_out_with_what_to_do(tp_checkpoint: Path) -> None:
    hog = placement_group([{"CPU": 3}])
    ray.get(hog.ready(), timeout=30)
    try:
        config = RunnerConfig(model=str(tp_checkpoint), device="cpu")
        with pytest.raises(ClusterConfigError, match=r"could not reserve 2 x \{'CPU': 1.0\} on "
                                                     r"one node within 2s .*another engine"):
            RayExecutor(config, 2, ClusterOptions(start_timeout_s=2))
    finally:
        remove_placement_group(hog)


@ray.remote
class FakeReplica:
    """Stands in for a Serve replica: Serve pins a replica to bundle 0 of its deployment's
    placement group with ``placement_group_capture_child_tasks=True``."""

    def run(self, checkpoint: str, tp: int) -> dict[str, Any]:
        config = RunnerConfig(model=checkpoint, num_kv_blocks=8, dtype="float32",
                              device="auto")
        executor = RayExecutor(config, tp)
        try:
            step = StepInput([ScheduledSequence("r", [1, 2, 3], 0, [0], True)],
                             [NewRequest("r", [1, 2, 3], SamplingParams(temperature=0.0))])
            output = executor.execute(step)
            return {
                "tokens": len(output.sampled),
                "owned": executor.group.placement.owned,
                "bundles": executor.group.placement.bundle_indices,
                "worker_groups": [r.placement_group_id for r in executor.group.reports()],
                "free": ray.available_resources(),
            }
        finally:
            executor.shutdown()


@pytest.mark.usefixtures("ray_cluster")
def test_inside_a_replica_the_ranks_use_its_placement_group(tp_checkpoint: Path) -> None:
    group = placement_group([{"CPU": 1}] * 3, strategy="STRICT_PACK")
    ray.get(group.ready(), timeout=30)
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                placement_group_capture_child_tasks=True)
    replica = FakeReplica.options(num_cpus=1, scheduling_strategy=strategy).remote()
    before = num_placement_groups()
    try:
        result = ray.get(replica.run.remote(str(tp_checkpoint), 2), timeout=120)
        # Too few bundles for tp=4: says how to deploy instead of waiting for devices.
        with pytest.raises(ClusterConfigError,
                           match=r"has 3 bundles but tensor_parallel_size=4 needs 5 .*"
                                 r"placement_group_bundles=\[\{\"CPU\": 1\}\] \+ "
                                 r"\[\{\"GPU\": 1\}\] \* 4"):
            ray.get(replica.run.remote(str(tp_checkpoint), 4), timeout=60)
    finally:
        ray.kill(replica)
        remove_placement_group(group)
    assert num_placement_groups() == before  # no nested group
    assert result["tokens"] == 1 and result["owned"] is False
    assert result["bundles"] == [1, 2]
    assert result["worker_groups"] == [group.id.hex()] * 2
    # Bundle 0 holds the replica and bundles 1, 2 the ranks: nothing is left in the group.
    assert all(result["free"].get(f"CPU_group_{i}_{group.id.hex()}", 0) == 0 for i in range(3))
