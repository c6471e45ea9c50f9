"""Fixtures of the fault tests: a real service (Ray Serve, its gRPC proxy over a socket,
redis-server) started per module, and the checks every case makes afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.serve.conftest import call_each_replica, free_port, redis_server  # noqa: F401

API_KEY = "chaos-key"
APP = "mistral"


@dataclass
class Service:
    target: str
    config: Any  # serve.config.ServeConfig

    def llm_stats(self) -> dict[str, dict]:
        return call_each_replica(APP, "LLMServer", "stats")

    def replica_actors(self, deployment: str) -> dict[str, Any]:
        """The RUNNING replicas of ``deployment``: replica id -> actor handle."""
        from serve.replicas import running_replica_actors

        return running_replica_actors(APP, deployment)

    def wait_all_blocks_free(self, timeout_s: float = 20.0) -> dict[str, dict]:
        """Every replica idle with every KV block free, or AssertionError with the stats."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.llm_stats()
            if stats and all(s["num_running"] == 0 and s["num_waiting"] == 0
                             and s["num_free_kv_blocks"] == s["num_kv_blocks"]
                             for s in stats.values()):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"KV blocks still held after {timeout_s}s: {stats}")
            time.sleep(0.1)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; AssertionError naming ``what`` past the bound."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s}s")
        time.sleep(0.2)
    return time.monotonic() - start


def start_service(**overrides: Any) -> Iterator[Service]:
    """Start the app with ``overrides`` on the session's Ray; shut Serve down afterwards."""
    from ray import serve

    from serve.app import start_serve
    from serve.config import ServeConfig

    values: dict[str, Any] = dict(api_key=API_KEY, grpc_port=free_port(),
                                  http_port=free_port(), accelerator="cpu",
                                  index_resync_s=1.0, app_name=APP)
    values.update(overrides)
    config = ServeConfig(**values)
    start_serve(config)
    try:
        yield Service(f"localhost:{config.grpc_port}", config)
    finally:
        serve.shutdown()


@pytest.fixture
def no_leaks() -> Callable[[list[Any]], None]:
    from serve.client.load import leaks

    def check(outcomes: list[Any]) -> None:
        assert leaks(outcomes) == []

    return check
