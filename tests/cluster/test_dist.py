"""Process-group setup in real Ray worker processes (one task per rank, gloo)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import ray

from cluster.dist import all_reduce_min, find_free_port, init_tp_group, node_ip

pytestmark = pytest.mark.usefixtures("ray_cluster")


# max_calls=1: a process that joined a group cannot join another, so it must not be reused.
@ray.remote(num_cpus=0, max_calls=1)
def join_and_agree(rank: int, world_size: int, addr: str, port: int, value: int,
                   timeout_s: float) -> tuple[int, int, int]:
    import torch

    ctx = init_tp_group(rank, world_size, addr, port, "gloo", timedelta(seconds=timeout_s))
    agreed = all_reduce_min(value, ctx, torch.device("cpu"))
    return ctx.tp_rank, ctx.tp_size, agreed


def test_ranks_meet_and_agree_on_the_smallest_value() -> None:
    addr, port = node_ip(), find_free_port()
    values = [130, 97, 112]
    results = ray.get([join_and_agree.remote(rank, 3, addr, port, value, 30)
                       for rank, value in enumerate(values)], timeout=60)
    assert results == [(0, 3, 97), (1, 3, 97), (2, 3, 97)]


def test_a_missing_rank_fails_the_rendezvous_within_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ray.exceptions.RayTaskError) as failure:
        # Rank 1 never comes.
        ray.get(join_and_agree.remote(0, 2, node_ip(), find_free_port(), 1, 2), timeout=60)
    assert time.monotonic() - started < 30
    assert "rank 0 could not join the tensor-parallel group of 2" in str(failure.value)
    assert "within 2s" in str(failure.value)


def test_a_group_of_one_needs_no_process_group() -> None:
    ctx = init_tp_group(0, 1, "unused", 0, "gloo")
    assert (ctx.tp_rank, ctx.tp_size, ctx.group) == (0, 1, None)
