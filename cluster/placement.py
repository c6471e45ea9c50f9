"""Where the ranks of one model copy run, and the checks that fail a bad start early.

Inside a Serve replica the workers take bundles 1..tp of the replica's own placement group
(bundle 0 is the replica); outside Serve the group reserves its own STRICT_PACK group, one
bundle per rank. A nested placement group is never created: Serve already reserved the
devices for this replica, and a second reservation would wait for devices that will not come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)

from model.config import ModelConfig
from model.layers.linear import qkv_shards
from model.parallel import ParallelContext, split_evenly


class ClusterConfigError(ValueError):
    """The requested tensor parallelism cannot run here; the message says what to change."""


@dataclass(frozen=True)
class WorkerResources:
    """What one rank reserves: a whole GPU (and no CPU, to fit ``{"GPU": 1}`` bundles), or
    ``num_cpus`` on a CPU-only cluster."""

    use_gpu: bool
    num_cpus: float

    @property
    def bundle(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.use_gpu else {"CPU": self.num_cpus}

    @property
    def device(self) -> str:
        return "cuda" if self.use_gpu else "cpu"


@dataclass
class Placement:
    """The placement group the ranks run in; ``bundle_indices[rank]`` is rank's bundle."""

    group: PlacementGroup
    bundle_indices: list[int]
    owned: bool  # created here, so removed at shutdown

    def release(self) -> None:
        if self.owned:
            remove_placement_group(self.group)


def check_model_split(config: ModelConfig, tp: int) -> None:
    """Every tensor the ranks split must split evenly.

    Example: 32 query heads and 8 KV heads split at tp=1, 2, 4, 8 (and 16, 32 by
    replicating KV heads); tp=3 fails because 3 does not divide 32.
    """
    try:
        qkv_shards(config.head_dim, config.num_attention_heads, config.num_key_value_heads,
                   ParallelContext(0, tp))
        split_evenly(config.intermediate_size, tp, "intermediate_size")
    except ValueError as exc:
        valid = [n for n in range(1, config.num_attention_heads + 1) if _splits(config, n)]
        raise ClusterConfigError(
            f"tensor_parallel_size={tp} cannot split this model: {exc}. Valid "
            f"tensor_parallel_size values for it: {', '.join(map(str, valid))}") from None


def _splits(config: ModelConfig, tp: int) -> bool:
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    kv_ok = kv_heads % tp == 0 if tp <= kv_heads else tp % kv_heads == 0
    return heads % tp == 0 and kv_ok and config.intermediate_size % tp == 0


def wants_gpu(device: str, cluster: dict[str, float]) -> bool:
    """``auto`` uses GPUs when the cluster has any; ``cuda`` insists on them."""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        if cluster.get("GPU", 0) < 1:
            raise ClusterConfigError(
                f"device={device!r} but the Ray cluster has no GPUs; use device='cpu' or "
                "connect to a cluster with GPUs")
        return True
    return cluster.get("GPU", 0) >= 1


def largest_node(resource: str) -> float:
    """The most of ``resource`` any one live node has (STRICT_PACK puts all ranks there)."""
    return max((node["Resources"].get(resource, 0.0) for node in ray.nodes() if node["Alive"]),
               default=0.0)


def check_capacity(tp: int, resources: WorkerResources, node_capacity: float) -> None:
    """A CPU-only cluster with 4 CPUs fits tp=4 at 1 CPU per rank, not tp=8."""
    per_rank = 1.0 if resources.use_gpu else resources.num_cpus
    needed = tp * per_rank
    if needed <= node_capacity + 1e-9:
        return
    if resources.use_gpu:
        raise ClusterConfigError(
            f"tensor_parallel_size={tp} needs {tp} GPUs on one node (one per rank) but the "
            f"largest node in the Ray cluster has {node_capacity:g}; lower "
            f"tensor_parallel_size to at most {int(node_capacity)} or add a node with {tp} GPUs")
    fits = int(node_capacity // per_rank + 1e-9)
    raise ClusterConfigError(
        f"tensor_parallel_size={tp} needs {needed:g} CPUs on one node ({per_rank:g} per rank "
        f"on a CPU-only cluster) but the largest node in the Ray cluster has "
        f"{node_capacity:g}; lower tensor_parallel_size to at most {fits}, lower "
        f"cpus_per_worker, or start Ray with more CPUs (ray.init(num_cpus=...))")


def _bundle_fits(bundle: dict[str, float], need: dict[str, float]) -> bool:
    return all(bundle.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def join_replica_group(group: PlacementGroup, tp: int, device: str,
                       num_cpus: float) -> tuple[Placement, WorkerResources]:
    """Use bundles 1..tp of the Serve replica's group; their contents pick the device."""
    specs: list[dict[str, Any]] = group.bundle_specs
    example = ('placement_group_bundles=[{"CPU": 1}] + [{"GPU": 1}] * '
               f'{tp}, placement_group_strategy="STRICT_PACK"')
    if len(specs) < tp + 1:
        raise ClusterConfigError(
            f"this Serve replica's placement group has {len(specs)} bundles but "
            f"tensor_parallel_size={tp} needs {tp + 1} (bundle 0 for the replica, one per "
            f"rank); deploy with {example}")
    worker_bundles = specs[1:tp + 1]
    use_gpu = all(b.get("GPU", 0) >= 1 for b in worker_bundles) and device != "cpu"
    if device.startswith("cuda") and not use_gpu:
        raise ClusterConfigError(f"device={device!r} but bundles 1..{tp} of the replica's "
                                 f"placement group hold no GPU; deploy with {example}")
    if not use_gpu:
        num_cpus = min(num_cpus, min(b.get("CPU", 0.0) for b in worker_bundles))
        if num_cpus <= 0:
            raise ClusterConfigError(f"bundles 1..{tp} of the replica's placement group hold "
                                     f"neither a GPU nor a CPU; deploy with {example}")
    resources = WorkerResources(use_gpu, num_cpus)
    bad = [i for i, b in enumerate(worker_bundles, 1) if not _bundle_fits(b, resources.bundle)]
    if bad:
        raise ClusterConfigError(f"bundles {bad} of the replica's placement group cannot hold "
                                 f"a rank ({resources.bundle}); deploy with {example}")
    return Placement(group, list(range(1, tp + 1)), owned=False), resources


def reserve_group(tp: int, resources: WorkerResources, timeout_s: float) -> Placement:
    """A STRICT_PACK group of one bundle per rank, ready within ``timeout_s`` or released."""
    check_capacity(tp, resources, largest_node("GPU" if resources.use_gpu else "CPU"))
    group = placement_group([resources.bundle] * tp, strategy="STRICT_PACK")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except GetTimeoutError:
        remove_placement_group(group)
        raise ClusterConfigError(
            f"could not reserve {tp} x {resources.bundle} on one node within "
            f"{timeout_s:.0f}s (free now: {ray.available_resources()}); another engine may "
            "hold them: stop it, lower tensor_parallel_size, or add capacity") from None
    return Placement(group, list(range(tp)), owned=True)


def acquire_placement(tp: int, device: str, num_cpus: float, timeout_s: float
                      ) -> tuple[Placement, WorkerResources]:
    current = get_current_placement_group()
    if current is not None:
        return join_replica_group(current, tp, device, num_cpus)
    resources = WorkerResources(wants_gpu(device, ray.cluster_resources()), num_cpus)
    return reserve_group(tp, resources, timeout_s), resources


def local_num_cpus(tp: int, num_cpus: float, machine_cpus: int) -> int:
    """CPUs to give a Ray instance this process starts itself: the machine's, or enough for
    the ranks when the machine has fewer (tp=4 on a 2-core laptop runs, just slower)."""
    return max(machine_cpus, math.ceil(tp * num_cpus))
