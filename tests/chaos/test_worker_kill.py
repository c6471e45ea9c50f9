"""A tensor-parallel worker (tp=2 on gloo) killed under load: every request in flight ends
within 5 s with a clean, retryable UNAVAILABLE, and Serve replaces the replica."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serve.client.load import Outcome, StreamSpec, run_streams, tally
from tests.chaos.conftest import API_KEY, Service, start_service, wait_until


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[Service]:
    yield from start_service(
        model=str(tiny_checkpoint), replicas=1, ingress_replicas=1, tensor_parallel_size=2,
        engine={"num_kv_blocks": 256, "dtype": "float32"})


def tp_workers() -> list[int]:
    """Process ids of the live tensor-parallel ranks (from the GCS actor table: the state
    API needs the dashboard, which the test cluster does not run)."""
    from ray._private import state

    return [actor["Pid"] for actor in state.actors().values()
            if actor["ActorClassName"] == "TPWorker" and actor["State"] == "ALIVE"]


def kill_actor(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)  # a crash: no goodbye to the group


def test_a_tensor_parallel_worker_killed_under_load(
        service: Service, no_leaks: Callable[[list[Any]], None]) -> None:
    workers = tp_workers()
    assert len(workers) == 2

    async def scenario() -> tuple[list[Outcome], float]:
        specs = [StreamSpec(f"tp {i} " * (1 + i % 5), 200) for i in range(24)]
        load = asyncio.create_task(run_streams(service.target, specs, API_KEY))
        await asyncio.sleep(1.5)
        kill_actor(workers[1])
        return await load, time.monotonic()

    killed_before = time.monotonic() + 1.5
    outcomes, _ = asyncio.run(scenario())
    counts = tally(outcomes)
    assert set(counts) <= {"ok", "UNAVAILABLE"}, counts
    failed = [o for o in outcomes if o.status == "UNAVAILABLE"]
    assert failed, "the kill landed after every stream had finished"
    assert max(o.ended for o in failed) - killed_before < 5.0
    assert all(o.details == "the replica serving this request failed; retry"
               for o in failed), {o.details for o in failed}
    no_leaks(outcomes)
    recovery = wait_until(lambda: len(tp_workers()) == 2
                          and len(service.replica_actors("LLMServer")) == 1, 180,
                          "Serve replacing the replica with the dead worker")
    print(f"recovered in {recovery:.1f}s")
    again = asyncio.run(run_streams(service.target, [StreamSpec("after", 4)], API_KEY,
                                    timeout_s=120))
    assert tally(again) == {"ok": 1}
    service.wait_all_blocks_free()
