"""The LLM service's gRPC server, run by each Ingress replica on the service's port.

A ``grpc.aio`` server on the replica's event loop, bound with ``SO_REUSEPORT`` so that the
Ingress replicas of one node share the port and the kernel spreads connections over them.
Beside the LLM service it answers ``grpc.health.v1`` (serve/ingress/grpc_health.py) and
server reflection. Every status is set here, from ``status_of`` (serve/errors.py): a
client never sees a status made by anything else.

A stream the client leaves (cancel, deadline, dropped connection) cancels its handler task,
whose clean-up cancels the LLMServer call: the engine aborts the request and frees its
blocks. Bytes that are no valid request message get INVALID_ARGUMENT saying so (grpc's own
answer would be UNKNOWN with a Python exception's text).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection

from serve.errors import ServiceError, grpc_code, invalid, status_of
from serve.grpc_api import llm_pb2, llm_pb2_grpc
from serve.ingress.convert import response
from serve.ingress.front_door import VERSION, FrontDoor
from serve.ingress.grpc_health import SERVICE_NAME as HEALTH_SERVICE
from serve.ingress.grpc_health import add_health_service
from serve.protocol import ServeRequest

logger = logging.getLogger(__name__)

LLM_SERVICE = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name
# Room above the service's own size limit, so that a request just over it gets the
# service's message (what to send instead) rather than grpc's.
RECEIVE_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class MalformedRequest:
    """What a request that is no valid protobuf message decodes to."""

    method: str  # e.g. "Generate"
    message_type: str  # e.g. "GenerateRequest"

    def explain(self) -> str:
        return (f"the {self.method} request is not a valid mistral.serve.v1."
                f"{self.message_type} message; send one serialized by the generated stubs "
                "(or the SDK)")


class LLMServicer(llm_pb2_grpc.LLMServiceServicer):
    def __init__(self, front: FrontDoor) -> None:
        self.front = front

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext  # noqa: N802
                       ) -> AsyncIterator[Any]:
        async for message in self._stream(request, context, self.front.generate_request):
            yield message

    async def Chat(self, request: Any, context: grpc.aio.ServicerContext  # noqa: N802
                   ) -> AsyncIterator[Any]:
        async for message in self._stream(request, context, self.front.chat_request):
            yield message

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext  # noqa: N802
                       ) -> Any:
        try:
            self._admit(request, context)
            if request.WhichOneof("input") == "chat":
                ids = self.front.chat_prompt(request.chat.messages,
                                             request.chat.continue_final_message)
            else:
                ids = self.front.tokenizer.encode(request.text, add_bos=request.add_bos)
        except Exception as exc:
            await _abort(context, exc, "tokenize")
        return llm_pb2.TokenizeResponse(token_ids=ids)

    async def ModelInfo(self, request: Any, context: grpc.aio.ServicerContext  # noqa: N802
                        ) -> Any:
        try:
            self._admit(request, context)
        except Exception as exc:
            await _abort(context, exc, "model-info")
        front = self.front
        return llm_pb2.ModelInfoResponse(
            model=front.settings.model_name, max_model_len=front.max_model_len,
            vocab_size=front.tokenizer.vocab_size, block_size=front.block_size,
            tensor_parallel_size=front.settings.tensor_parallel_size, version=VERSION)

    def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, MalformedRequest):
            raise invalid(request.explain())
        self.front.authenticate_grpc(dict(context.invocation_metadata() or ()))
        self.front.check_size(request.ByteSize())

    async def _stream(self, request: Any, context: grpc.aio.ServicerContext,
                      build: Callable[[Any], ServeRequest]) -> AsyncIterator[Any]:
        try:
            self._admit(request, context)
            serve_request = build(request)
        except Exception as exc:
            await _abort(context, exc, "new")
        stream = self.front.open_stream(serve_request)
        finished = False
        try:
            async for chunk in stream:
                if chunk.error_code is not None:
                    finished = True
                    await _abort(context, ServiceError(chunk.error or "", chunk.error_code),
                                 serve_request.request_id)
                yield response(chunk)
            finished = True
        except grpc.aio.AbortError:
            raise  # the status is set
        except Exception as exc:
            finished = True  # the call failed; nothing left to cancel
            await _abort(context, exc, serve_request.request_id)
        finally:
            # Not finished: the client left (grpc cancelled this handler) or stopped
            # reading. Cancel the LLMServer call now: the engine frees the request's blocks.
            if not finished:
                stream.cancel()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException,
                 request_id: str) -> NoReturn:
    error = status_of(exc, request_id)
    await context.abort(grpc_code(error.status), error.message)
    raise AssertionError("unreachable: abort raises")


def _tolerant(method: str, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_type = getattr(decode, "__qualname__", "message").split(".")[0]

    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except (DecodeError, ValueError, TypeError):
            return MalformedRequest(method, message_type)

    return decode_or_mark


def _with_tolerant_decoding(name: str, handler: Any) -> Any:
    if handler.request_deserializer is None:
        return handler
    return handler._replace(request_deserializer=_tolerant(name.rsplit("/", 1)[-1],
                                                           handler.request_deserializer))


class _TolerantRegistration:
    """Stands in for the server while the generated code registers the LLM service."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for handler in handlers:
            # grpc's DictionaryGenericHandler keeps them by "/service/Method".
            handler._method_handlers = {name: _with_tolerant_decoding(name, h)
                                        for name, h in handler._method_handlers.items()}
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.server.add_registered_method_handlers(
            service, {name: _with_tolerant_decoding(name, h) for name, h in handlers.items()})


def build_grpc_server(front: FrontDoor, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The server, not started, and the port it bound (``port`` 0: any free one)."""
    limit = front.max_message_bytes + RECEIVE_SLACK_BYTES
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
    ])
    llm_pb2_grpc.add_LLMServiceServicer_to_server(LLMServicer(front),
                                                  _TolerantRegistration(server))
    add_health_service(server, {LLM_SERVICE}, front.ready)
    reflection.enable_server_reflection((LLM_SERVICE, HEALTH_SERVICE,
                                         reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC server to {host}:{port}")
    return server, bound
