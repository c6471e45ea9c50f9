"""What the app books from Ray, and ``up`` failing at once when the machine cannot hold it
(instead of waiting forever for resources that never come)."""

from __future__ import annotations

import pytest

from serve.app import check_fits, replica_cpu_threads, required_resources
from serve.config import AutoscalingBounds, ServeConfig


def test_two_cpu_replicas_and_the_ingress_fit_two_cores() -> None:
    config = ServeConfig(replicas=2, accelerator="cpu")
    assert required_resources(config) == {"CPU": 1.25}
    check_fits(config, {"CPU": 2.0})


def test_what_does_not_fit_fails_saying_what_to_change() -> None:
    config = ServeConfig(replicas=2, tensor_parallel_size=2, accelerator="cpu")
    with pytest.raises(ValueError, match=r"needs 5.25 CPU but this Ray cluster has 2: lower "
                                         r"--replicas/--max-replicas \(now 2\) or --tp"):
        check_fits(config, {"CPU": 2.0})


def test_gpu_replicas_book_one_gpu_per_rank_at_the_autoscaling_maximum() -> None:
    config = ServeConfig(tensor_parallel_size=2, accelerator="gpu",
                         autoscaling=AutoscalingBounds(min_replicas=1, max_replicas=3))
    assert required_resources(config)["GPU"] == 6
    with pytest.raises(ValueError, match="needs 6 GPU but this Ray cluster has 4"):
        check_fits(config, {"CPU": 64.0, "GPU": 4.0})


@pytest.mark.parametrize(("config", "cpus", "nodes", "threads"), [
    (ServeConfig(accelerator="cpu"), 2, 1, 2),  # a lone replica computes with every core
    (ServeConfig(replicas=2, accelerator="cpu"), 2, 1, 1),
    (ServeConfig(tensor_parallel_size=2, accelerator="cpu",
                 autoscaling=AutoscalingBounds(min_replicas=1, max_replicas=2)), 16, 1, 4),
    (ServeConfig(replicas=4, accelerator="cpu"), 2, 1, 1),  # never fewer than one
    (ServeConfig(accelerator="cpu"), 64, 3, 1),  # a cluster: the CPUs a rank books
    (ServeConfig(accelerator="cpu", engine={"cpu_threads": 3}), 2, 1, 3),  # as set
])
def test_cpu_replicas_compute_with_the_cores_they_own(config: ServeConfig, cpus: int,
                                                      nodes: int, threads: int) -> None:
    assert replica_cpu_threads(config, False, cpus, nodes) == threads


def test_gpu_replicas_keep_torch_threads_unless_set() -> None:
    assert replica_cpu_threads(ServeConfig(accelerator="gpu"), True, 16, 1) is None
    config = ServeConfig(accelerator="gpu", engine={"cpu_threads": 2})
    assert replica_cpu_threads(config, True, 16, 1) == 2
