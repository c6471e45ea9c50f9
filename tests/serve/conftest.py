"""Fixtures of the serve tests: a real redis-server, prefix indexes of both kinds, and the
one way to start the service (``start_service``) that every service test uses.

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


# ---- the service ------------------------------------------------------------------------

SERVICE_READY_TIMEOUT_S = 90.0


@dataclass
class Service:
    """A running app: its ``config`` (``serve.config.ServeConfig``) and ways to reach it."""

    config: Any

    @property
    def app(self) -> str:
        return self.config.app_name

    @property
    def target(self) -> str:
        """The gRPC address."""
        return f"localhost:{self.config.grpc_port}"

    @property
    def url(self) -> str:
        """The HTTP base URL."""
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def model(self) -> str:
        return self.config.model

    def post(self, path: str, body: Any, key: str | None = "", **kwargs: Any) -> Any:
        """POST JSON to ``path`` with the service's API key ("", the default), another
        one, or none (None)."""
        import requests

        key = self.config.api_key if key == "" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(self.url + path, json=body, headers=headers, timeout=60,
                             **kwargs)

    def get(self, path: str, key: str | None = "") -> Any:
        import requests

        key = self.config.api_key if key == "" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(self.url + path, headers=headers, timeout=30)

    def llm_stats(self) -> dict[str, dict]:
        """Each LLMServer replica's engine stats, asked of every replica directly (a call
        through the router may keep reaching the same one)."""
        return call_each_replica(self.app, "LLMServer", "stats")

    def replica_actors(self, deployment: str) -> dict[str, Any]:
        """The RUNNING replicas of ``deployment``: replica id -> actor handle."""
        from serve.replicas import running_replica_actors

        return running_replica_actors(self.app, deployment)

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


def _wait_ready(service: Service) -> None:
    """Until the HTTP server says the Ingress can serve (a live LLMServer behind it)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(service.url + "/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not become ready within "
                                 f"{SERVICE_READY_TIMEOUT_S}s")
        time.sleep(0.2)


def start_service(**overrides: Any) -> Iterator[Service]:
    """Start the app on the session's Ray (CPU, free ports, ``overrides`` on top), wait
    until it serves, and shut Serve down afterwards. Use with ``yield from`` in a fixture."""
    from ray import serve

    from serve.app import start_serve
    from serve.config import ServeConfig

    values: dict[str, Any] = dict(grpc_port=free_port(), http_port=free_port(),
                                  accelerator="cpu")
    values.update(overrides)
    config = ServeConfig(**values)
    start_serve(config)
    try:
        service = Service(config)
        _wait_ready(service)
        yield service
    finally:
        serve.shutdown()
