"""A model step longer than every internal timeout of the service (the engine stats call's
10 s, the router's stats period, Serve's health-check period): requests in flight finish,
the engine loop lives on, the replica stays healthy and the service keeps serving.

The step is slowed through the fault-injection switch of the model runner
(MISTRAL_SERVE_FAULT_STEP_DELAY_S, set only in this app's replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from model.envs import FAULT_STEP_DELAY_ENV
from serve.client.load import StreamSpec, run_streams, tally
from tests.chaos.conftest import API_KEY, Service, start_service

STEP_DELAY_S = 11.0


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[Service]:
    yield from start_service(
        model=str(tiny_checkpoint), replicas=1, ingress_replicas=1,
        replica_env={FAULT_STEP_DELAY_ENV: str(STEP_DELAY_S)},
        engine={"num_kv_blocks": 256, "dtype": "float32"})


def test_a_step_longer_than_every_timeout(service: Service,
                                          no_leaks: Callable[[list[Any]], None]) -> None:
    specs = [StreamSpec(f"slow {i}", 2) for i in range(24)]
    started = time.monotonic()
    outcomes = asyncio.run(run_streams(service.target, specs, API_KEY, timeout_s=120))
    elapsed = time.monotonic() - started
    assert tally(outcomes) == {"ok": 24}
    assert all(o.tokens == 2 for o in outcomes)
    no_leaks(outcomes)
    assert elapsed >= 2 * STEP_DELAY_S  # the steps really were slow
    # Stats were asked for during the steps (metrics, resync) and the loop survived them.
    stats = service.wait_all_blocks_free(timeout_s=30)
    (replica,) = service.replica_actors("LLMServer").values()
    assert len(stats) == 1
    again = asyncio.run(run_streams(service.target, [StreamSpec("after", 1)], API_KEY))
    assert tally(again) == {"ok": 1}
    assert list(service.replica_actors("LLMServer").values()) == [replica]  # not replaced
