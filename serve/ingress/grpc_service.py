"""Registers the LLMService on Serve's gRPC proxy so that no failure reaches a client raw.

Two things the generated registration leaves to Serve go wrong for clients:

- Requests are decoded with ``Message.FromString``; bytes that are no valid message make
  that raise inside grpc, which answers ``UNKNOWN`` with the Python exception's text. Here
  a bad message decodes to a :class:`MalformedRequest` instead, which travels to the
  Ingress like any request, and the Ingress answers ``INVALID_ARGUMENT``.
- When the Ingress replica itself dies mid-call, Serve's proxy answers ``INTERNAL`` with
  Ray's account of the death (actor id, pid, node address). The proxy's own behaviours are
  wrapped here: a status whose details show internals is replaced, before it is sent, by
  ``UNAVAILABLE`` with a one-line message (the cause stays in the proxy's log).

Serve is given :func:`add_llm_service_to_server` as its servicer function; it runs in each
proxy process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serve.errors import REPLICA_FAILED
from serve.grpc_api import llm_pb2_grpc
from serve.grpc_api.leaks import LEAK_PATTERN

logger = logging.getLogger(__name__)

BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


@dataclass(frozen=True)
class MalformedRequest:
    """What a request that is no valid protobuf message decodes to."""

    method: str  # e.g. "Generate"
    message_type: str  # e.g. "GenerateRequest"

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf name the Ingress calls
        return 0

    def explain(self) -> str:
        return (f"the {self.method} request is not a valid mistral.serve.v1."
                f"{self.message_type} message; send one serialized by the generated stubs "
                "(or the SDK)")


def _tolerant(method: str, decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    # The generated decoders are ``<Message>.FromString``.
    message_type = getattr(decode, "__qualname__", "message").split(".")[0]

    def decode_or_mark(data: bytes) -> Any:
        assert decode is not None
        try:
            return decode(data)
        except (DecodeError, ValueError, TypeError):
            return MalformedRequest(method, message_type)

    return decode_or_mark


def sanitized(code: grpc.StatusCode | None, details: str) -> tuple[grpc.StatusCode | None, str]:
    """The status a client may see in place of ``(code, details)``."""
    if not details or not LEAK_PATTERN.search(details):
        return code, details
    logger.warning("replaced a status that showed internals: %s %s", code, details)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                None) and ("died" in details or "unavailable" in details.lower()):
        return grpc.StatusCode.UNAVAILABLE, REPLICA_FAILED
    return code, "internal error; retry later"


class _SanitizingContext:
    """The servicer context, with set_code/set_details passing through ``sanitized``.

    The peer is read once, up front: a pumped behaviour (below) may still be finishing
    (Serve's proxy writes its access log there) after grpc has released the RPC's core
    call, and grpc's ``peer()`` then dereferences a null call and kills the process.
    """

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None
        self._peer: str = context.peer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        code, clean = sanitized(self._code, details)
        if code is not None and code != self._code:
            self._context.set_code(code)
        self._context.set_details(clean)


def _sanitizing(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):
        return _pumped(behaviour)

    async def unary(request: Any, context: Any) -> Any:
        return await behaviour(request, _SanitizingContext(context))

    return unary


_END = object()


def _pumped(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """A streaming behaviour run by a task of its own that feeds a queue.

    Serve's proxy cancels the call to the Ingress only when a cancellation reaches it while
    it awaits the next message; one that lands while grpc is sending the previous message
    closes its generator at a ``yield`` instead, and the Ingress call (and the engine
    request behind it) runs on to its end. Pumped, Serve's generator always waits on the
    next message, and the RPC's end cancels the pump there, so every cancel propagates.
    """

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        items: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in behaviour(request, _SanitizingContext(context)):
                    items.put_nowait(item)
            finally:
                items.put_nowait(_END)

        task = asyncio.ensure_future(pump())
        # Read its outcome even when no one is left to await it, so that a failure after
        # the RPC ended does not log "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        stopped = False

        def stop(*_: Any) -> None:
            # Once only: a second cancel would cut short the behaviour's own clean-up
            # (Serve's proxy cancels the Ingress call and logs the request there).
            nonlocal stopped
            if not stopped:
                stopped = True
                task.cancel()

        add_done_callback = getattr(context, "add_done_callback", None)
        if add_done_callback is not None:  # the RPC ended (cancelled, deadline, done)
            add_done_callback(stop)
        try:
            while (item := await items.get()) is not _END:
                yield item
            await task  # its exception, if any, is grpc's to report
        finally:
            stop()

    return stream


def _sanitizing_handler(handler: Any) -> Any:
    """``handler`` whose ``_replace`` wraps the behaviours put in: Serve's proxy swaps in its
    own behaviours through ``_replace``, so those end up wrapped."""

    class SanitizingHandler(type(handler)):  # type: ignore[misc]
        __slots__ = ()

        def _replace(self, **changes: Any) -> Any:
            for key in BEHAVIOURS:
                if changes.get(key) is not None:
                    changes[key] = _sanitizing(changes[key])
            return super()._replace(**changes)

    return SanitizingHandler(*handler)


def _rewrite(name: str, handler: Any) -> Any:
    method = name.rsplit("/", 1)[-1]
    if handler.request_deserializer is not None:
        handler = handler._replace(
            request_deserializer=_tolerant(method, handler.request_deserializer))
    return _sanitizing_handler(handler)


class _TolerantRegistration:
    """Stands in for the server while the generated code registers its handlers."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for handler in handlers:
            # grpc's DictionaryGenericHandler keeps them by "/service/Method" (Serve's own
            # proxy reads the same attribute).
            handler._method_handlers = {name: _rewrite(name, h)
                                        for name, h in handler._method_handlers.items()}
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        add = getattr(self.server, "add_registered_method_handlers", None)
        if add is not None:
            add(service, {name: _rewrite(name, h) for name, h in handlers.items()})


def add_llm_service_to_server(servicer: Any, server: Any) -> None:
    llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, _TolerantRegistration(server))
