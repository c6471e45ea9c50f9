"""The per-step control path: one TCP connection from the engine to each rank.

A Ray actor call costs about a millisecond on a fast node (3 ms on a 2-core one), which is
as much as a whole decode step, so Ray only starts and stops workers. Per step the engine
pickles the :class:`StepInput` once, writes the same frame to every rank's socket and waits
for rank 0's reply. The sockets also carry failure: a killed rank's socket closes, and the
engine sees it in the same ``select`` that waits for the reply, with no polling.

Wire format: a frame is an 8-byte little-endian length, then a pickle. Pickles run code when
loaded, so a rank accepts only a connection that first sends the group's 32-byte secret,
which the engine handed it through Ray.

Example: a decode step for 4 sequences pickles to about 600 bytes; at tp=2 the engine writes
two 608-byte frames and reads one reply of about 300 bytes.
"""

from __future__ import annotations

import contextlib
import hmac
import pickle
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("<Q")
TOKEN_SIZE = 32


class ChannelError(RuntimeError):
    """A rank died, failed its step, or did not answer in time."""


@dataclass
class Reply:
    """What a rank sends back: rank 0's output, or any rank's error."""

    rank: int
    output: Any = None  # a StepOutput for a StepInput
    error: str | None = None


def _tune(sock: socket.socket) -> None:
    # Frames are small and latency-bound: never let Nagle hold one back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def encode(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise ConnectionError("the peer closed the connection")
        received += count
    return bytes(buffer)


def recv_message(sock: socket.socket) -> Any:
    (size,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    return pickle.loads(recv_exact(sock, size))


class StepServer:
    """A rank's end: listens once, accepts the engine, then serves steps until EOF."""

    def __init__(self, rank: int, host: str, token: bytes) -> None:
        self.rank = rank
        self.token = token
        self.listener = socket.create_server((host, 0))
        self.address: tuple[str, int] = (host, int(self.listener.getsockname()[1]))

    def accept(self, timeout: float) -> socket.socket:
        """The first connection that proves it holds the token; strangers are dropped."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"rank {self.rank}: the engine did not connect within "
                                       f"{timeout:.0f}s")
                self.listener.settimeout(remaining)
                conn, _peer = self.listener.accept()
                conn.settimeout(remaining)
                try:
                    if hmac.compare_digest(recv_exact(conn, TOKEN_SIZE), self.token):
                        conn.settimeout(None)
                        _tune(conn)
                        return conn
                except OSError:
                    pass
                conn.close()
        finally:
            self.listener.close()

    def serve(self, conn: socket.socket, handle: Callable[[Any], Any]) -> None:
        """Run steps until the engine hangs up. After a failed step the group's collectives
        are out of step, so the rank reports the error and stops serving."""
        with conn:
            while True:
                try:
                    message = recv_message(conn)
                except (ConnectionError, OSError):
                    return
                try:
                    output = handle(message)
                except Exception as exc:  # reported to the engine, which fails the group
                    error = f"rank {self.rank}: {type(exc).__name__}: {exc}"
                    with contextlib.suppress(OSError):
                        conn.sendall(encode(Reply(self.rank, error=error)))
                    return
                if self.rank == 0:
                    try:
                        conn.sendall(encode(Reply(0, output=output)))
                    except OSError:  # the engine is gone; so is the reason to serve
                        return


class StepChannel:
    """The engine's end: broadcast a message to every rank, return rank 0's answer."""

    def __init__(self, addresses: list[tuple[str, int]], token: bytes, timeout: float) -> None:
        self.timeout = timeout
        self.sockets: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        try:
            for rank, address in enumerate(addresses):
                sock = socket.create_connection(address, timeout=timeout)
                _tune(sock)
                sock.sendall(token)
                self.sockets.append(sock)
                self.selector.register(sock, selectors.EVENT_READ, rank)
        except OSError as exc:
            self.close()
            raise ChannelError(f"could not connect to rank {len(self.sockets)} at "
                               f"{addresses[len(self.sockets)]}: {exc}") from exc

    def call(self, message: Any) -> Any:
        """Send ``message`` (a :class:`StepInput`, usually) to every rank; rank 0's answer."""
        frame = encode(message)
        for rank, sock in enumerate(self.sockets):
            try:
                sock.sendall(frame)
            except OSError as exc:
                raise ChannelError(f"rank {rank} is gone ({exc})") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError(f"rank 0 did not answer within {self.timeout:g}s "
                                   "(a rank hangs)")
            answer: Reply | None = None
            # Every ready socket is read before answering, so an error that arrives with
            # rank 0's reply is not left for the next step to trip over.
            for key, _events in self.selector.select(remaining):
                reply = self._read(key.data, key.fileobj)  # type: ignore[arg-type]
                if reply.error is not None:
                    raise ChannelError(reply.error)
                if reply.rank == 0:
                    answer = reply
            if answer is not None:
                return answer.output

    def _read(self, rank: int, sock: socket.socket) -> Reply:
        try:
            reply = recv_message(sock)
        except (ConnectionError, OSError) as exc:
            raise ChannelError(f"rank {rank} died (its connection closed: {exc})") from exc
        if not isinstance(reply, Reply):
            raise ChannelError(f"rank {rank} sent {type(reply).__name__}, not a Reply")
        return reply

    def close(self) -> None:
        """Closing is the shutdown signal: each rank's loop sees EOF and returns."""
        self.selector.close()
        for sock in self.sockets:
            sock.close()
        self.sockets = []
