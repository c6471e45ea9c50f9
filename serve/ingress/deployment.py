"""The Ingress deployment: the service's front door, one replica per node that takes traffic
(or several: they share the ports).

Each replica runs the public servers itself, on the service's fixed ports: the LLM service
over gRPC (serve/ingress/grpc_server.py) and the OpenAI HTTP API (serve/ingress/
http_server.py). Serve's proxies are not on the data path; Serve places, scales, heals and
upgrades these replicas, and the Ingress reaches the LLMServer replicas through Serve (its
handle and router for admission and routing, output channels for the tokens).

A replica whose servers cannot bind fails to start, and Serve retries it. Draining (an
upgrade, a scale-down, ``serve.shutdown``) stops accepting, lets the streams in flight
finish for up to ``DRAIN_S``, then cancels the rest, whose requests the engines abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ray import serve

from serve.config import IngressSettings
from serve.ingress.front_door import FrontDoor
from serve.ingress.grpc_server import build_grpc_server
from serve.ingress.http_server import HttpServer

logger = logging.getLogger(__name__)

# How long a draining replica lets its streams finish (below the deployment's
# graceful_shutdown_timeout_s, so that Serve does not kill it first).
DRAIN_S = 20.0


@serve.deployment(name="Ingress")
class Ingress:
    async def __init__(self, llm_server: Any, settings: IngressSettings) -> None:
        self.front = FrontDoor(llm_server, settings)
        self.grpc, self.grpc_port = build_grpc_server(self.front, settings.grpc_host,
                                                      settings.grpc_port)
        from serve.openai.app import build_openai_app

        self.http = HttpServer(build_openai_app(self.front), settings.http_host,
                               settings.http_port)
        await self.grpc.start()
        try:
            await self.http.start()
        except BaseException:
            await self.grpc.stop(None)
            raise
        self.front.start_ready_probe()
        self._stopped = False
        logger.info("Ingress serving gRPC on %s:%d and HTTP on %s:%d", settings.grpc_host,
                    self.grpc_port, settings.http_host, self.http.port)

    async def output_channel_stats(self) -> dict[str, Any]:
        """What this replica's output channels carried so far (operators' tools, tests)."""
        return self.front.output_channel_stats()

    async def ports(self) -> dict[str, int]:
        """The ports this replica's servers bound (tests that ask for port 0)."""
        return {"grpc": self.grpc_port, "http": self.http.port}

    async def ready(self) -> bool:
        """Whether this replica can serve: its servers up and a live LLMServer behind it."""
        return not self._stopped and self.http.running and self.front.ready()

    async def check_health(self) -> None:
        """Serve replaces the replica when this raises: its HTTP server stopped on its own.
        (No LLMServer behind it is not the Ingress's fault: readiness says it instead.)"""
        if not self._stopped and not self.http.running:
            raise RuntimeError("the Ingress's HTTP server stopped")

    async def __del__(self) -> None:
        """Serve calls this once the replica drains: stop both servers gracefully."""
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        self.front.stop_ready_probe()
        with contextlib.suppress(Exception):
            await asyncio.gather(self.grpc.stop(DRAIN_S), self.http.stop(DRAIN_S))
