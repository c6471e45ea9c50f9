"""Fixtures of the fault tests: a real service (Ray Serve, the Ingress's own servers over a
socket, redis-server) started per module, and the checks every case makes afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.serve.conftest import Service, redis_server  # noqa: F401
from tests.serve.conftest import start_service as serve_start_service

API_KEY = "chaos-key"
APP = "mistral"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; AssertionError naming ``what`` past the bound."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s}s")
        time.sleep(0.2)
    return time.monotonic() - start


def start_service(**overrides: Any) -> Iterator[Service]:
    """The shared service fixture (tests/serve/conftest.py) with the chaos tests' key,
    app name and a one-second index resync."""
    values: dict[str, Any] = dict(api_key=API_KEY, index_resync_s=1.0, app_name=APP)
    values.update(overrides)
    yield from serve_start_service(**values)


@pytest.fixture
def no_leaks() -> Callable[[list[Any]], None]:
    from serve.client.load import leaks

    def check(outcomes: list[Any]) -> None:
        assert leaks(outcomes) == []

    return check
