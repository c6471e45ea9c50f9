"""Process-group setup for one tensor-parallel group.

Rank 0 hosts the rendezvous (a TCP store on its node IP and a free port); every rank joins
with a bounded timeout, so a rank that never arrives fails the start instead of hanging it.
NCCL carries the activations' all-reduces on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from model.parallel import ParallelContext

DEFAULT_INIT_TIMEOUT = timedelta(seconds=120)


class GroupInitError(RuntimeError):
    """The ranks did not assemble: one is missing, or the rendezvous is unreachable."""


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def node_ip() -> str:
    """The IP other nodes reach this one at (the one Ray registered, when Ray is present)."""
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except ImportError:
        pass
    # No packet is sent: connecting a UDP socket only picks the outgoing interface.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def find_free_port() -> int:
    """A port free on this node now. Another process may take it before the store binds;
    rank 0 picks it in its own process just before binding to keep that window short."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def init_tp_group(rank: int, world_size: int, master_addr: str, master_port: int,
                  backend: str, timeout: timedelta = DEFAULT_INIT_TIMEOUT,
                  device: torch.device | None = None) -> ParallelContext:
    """Join the group and return this rank's :class:`ParallelContext`.

    ``timeout`` bounds the rendezvous (a missing rank raises after it) and, for gloo, every
    later collective. ``device`` lets NCCL connect eagerly, so a broken rank shows up here
    rather than in the first step.
    """
    if world_size == 1:
        return ParallelContext(0, 1, None)
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group; "
                           "a TP worker joins exactly one")
    try:
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if backend == "nccl" else None,
        )
    except RuntimeError as exc:  # torch's DistStoreError/DistNetworkError derive from it
        raise GroupInitError(
            f"rank {rank} could not join the tensor-parallel group of {world_size} at "
            f"{master_addr}:{master_port} within {timeout.total_seconds():g}s "
            f"(did every rank start?): {exc}") from exc
    return ParallelContext(rank, world_size, dist.group.WORLD)


def all_reduce_min(value: int, ctx: ParallelContext, device: torch.device) -> int:
    """The smallest ``value`` over the group (e.g. KV blocks: every rank must allocate the
    same number, and the rank with the least free memory decides)."""
    if ctx.tp_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=ctx.group)
    return int(tensor.item())


def destroy_tp_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
