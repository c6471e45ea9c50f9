"""Fixtures of the serve tests: a real redis-server and prefix indexes of both kinds.

The server is one per session, restartable on the same port, started as ``redis-server --port N --save '' --appendonly no`` (nothing persisted, so a
restart comes back empty, like a Redis pod that was rescheduled). Tests isolate themselves
with a unique key prefix rather than FLUSHALL, so they may share the one server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from serve.prefix_index import InProcessPrefixIndex, PrefixIndex

if TYPE_CHECKING:
    from serve.prefix_index.redis_index import RedisPrefixIndex

READY_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.settimeout(0.2)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server subprocess; ``stop``/``start`` keep the port, for outage tests."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                   "--loglevel", "warning"]  # fmt: skip
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL, like a crashed pod: no shutdown handshake with the clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server_restored(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session server, for a test that stops or pauses it; running again afterwards."""
    yield redis_server
    redis_server.resume()
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.process = None
        redis_server.start()


def redis_index(server: RedisServer, **options: Any) -> RedisPrefixIndex:
    """A ``RedisPrefixIndex`` under a fresh key prefix, with a short back-off for tests."""
    from serve.prefix_index.redis_index import RedisPrefixIndex

    options = {"key_prefix": f"test-{uuid.uuid4().hex[:8]}", "retry_interval_s": 0.05, **options}
    return RedisPrefixIndex(server.url, **options)


@pytest.fixture(params=["in_process", "redis"])
def make_index(request: pytest.FixtureRequest) -> Iterator[Callable[..., PrefixIndex]]:
    """Builds indexes of the parametrized kind, so one test covers both; closes them."""
    made: list[PrefixIndex] = []

    def make(**options: Any) -> PrefixIndex:
        index: PrefixIndex
        if request.param == "redis":
            index = redis_index(request.getfixturevalue("redis_server"), **options)
        else:
            index = InProcessPrefixIndex(**options)
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()


@pytest.fixture
def index(make_index: Callable[..., PrefixIndex]) -> PrefixIndex:
    return make_index()


class RoundTrips:
    """Counts request writes on every redis-py connection: one per command or pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis.connection

        self.count = 0
        send = redis.connection.Connection.send_packed_command

        def counting(connection: object, *args: object, **kwargs: object) -> None:
            self.count += 1
            send(connection, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)

    def __call__(self, call: Callable[[], object]) -> int:
        """Round trips that ``call()`` makes."""
        before = self.count
        call()
        return self.count - before


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    return RoundTrips(monkeypatch)


def call_each_replica(app: str, deployment: str, method: str, *args: Any,
                      timeout_s: float = 30.0) -> dict[str, Any]:
    """``method(*args)`` on every RUNNING replica of ``deployment``, keyed by replica id
    (through each replica actor: a handle's router may never reach some replica)."""
    from serve.replicas import call_replicas

    return call_replicas(app, deployment, method, *args, timeout_s=timeout_s)
