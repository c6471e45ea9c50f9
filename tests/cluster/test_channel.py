"""The step channel over real sockets, with ranks played by threads (no Ray needed)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster.channel import TOKEN_SIZE, ChannelError, StepChannel, StepServer

TOKEN = b"k" * TOKEN_SIZE


def start_rank(rank: int, handle: Callable[[Any], Any]) -> StepServer:
    server = StepServer(rank, "127.0.0.1", TOKEN)

    def run() -> None:
        try:
            conn = server.accept(timeout=10)
        except OSError:
            return
        server.serve(conn, handle)

    threading.Thread(target=run, daemon=True).start()
    return server


@pytest.fixture
def channels() -> Iterator[list[StepChannel]]:
    opened: list[StepChannel] = []
    yield opened
    for channel in opened:
        channel.close()


def connect(servers: list[StepServer], opened: list[StepChannel],
            timeout: float = 5.0) -> StepChannel:
    channel = StepChannel([s.address for s in servers], TOKEN, timeout)
    opened.append(channel)
    return channel


def test_every_rank_gets_the_message_and_rank_0_answers(channels: list[StepChannel]) -> None:
    seen: list[tuple[int, str]] = []

    def recorder(rank: int) -> Callable[[Any], Any]:
        def handle(message: Any) -> Any:
            seen.append((rank, repr(message)))
            return ("done", rank, message)
        return handle

    channel = connect([start_rank(r, recorder(r)) for r in range(3)], channels)
    assert channel.call({"step": 1}) == ("done", 0, {"step": 1})
    assert channel.call([2]) == ("done", 0, [2])
    deadline = time.monotonic() + 5
    while len(seen) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == sorted((r, m) for r in range(3) for m in ("{'step': 1}", "[2]"))


def test_a_stranger_without_the_token_is_dropped(channels: list[StepChannel]) -> None:
    server = start_rank(0, lambda m: m)
    with socket.create_connection(server.address) as stranger:
        stranger.sendall(b"x" * TOKEN_SIZE)
        stranger.settimeout(5)
        assert stranger.recv(1) == b""  # closed on us
    assert connect([server], channels).call("ping") == "ping"


def test_a_rank_that_fails_its_step_reports_the_error(channels: list[StepChannel]) -> None:
    def broken(message: Any) -> Any:
        raise ValueError("block table too short")

    channel = connect([start_rank(0, lambda m: time.sleep(5)), start_rank(1, broken)],
                      channels)
    started = time.monotonic()
    with pytest.raises(ChannelError, match="rank 1: ValueError: block table too short"):
        channel.call("step")
    assert time.monotonic() - started < 2


def test_a_rank_whose_connection_closes_fails_the_step_at_once(
        channels: list[StepChannel]) -> None:
    server = StepServer(1, "127.0.0.1", TOKEN)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept(10)), daemon=True).start()
    channel = connect([start_rank(0, lambda m: time.sleep(5)), server], channels,
                      timeout=30)
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    accepted[0].close()  # what the kernel does when the rank's process is killed
    started = time.monotonic()
    with pytest.raises(ChannelError, match="rank 1"):
        channel.call("step")
    assert time.monotonic() - started < 2


def test_a_rank_that_hangs_times_out(channels: list[StepChannel]) -> None:
    channel = connect([start_rank(0, lambda m: time.sleep(3))], channels, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ChannelError, match="did not answer within 0.5s"):
        channel.call("step")
    assert time.monotonic() - started < 1.5
