"""The OpenAI HTTP app (serve/openai/app.py) on an ASGI server of the Ingress replica.

uvicorn on the replica's event loop, on a socket bound with ``SO_REUSEPORT`` so that the
Ingress replicas of one node share the service's HTTP port. Signals are left to the
replica: the server stops when the replica drains (``stop``), not when the process gets
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

# How often ``start`` looks whether the server is up, and for how long.
_START_POLL_S = 0.02
START_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the replica's process handles its own signals


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self.socket = reuseport_socket(host, port)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                timeout_keep_alive=30)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self.socket]))
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()  # its failure
                raise RuntimeError("the HTTP server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the HTTP server did not start")
            await asyncio.sleep(_START_POLL_S)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let the responses in flight finish for up to ``grace_s``, then
        close what is left (its streams are cancelled, so their requests are aborted)."""
        if self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(1, int(grace_s))
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s + 5.0)
        except (asyncio.TimeoutError, Exception):
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.socket.close()
