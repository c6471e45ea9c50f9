"""The front door: Serve's gRPC proxy calls these methods by RPC name.

It authenticates, tokenizes and validates, hashes the prompt's blocks for the router, and
streams the LLMServer's chunks back. Errors become gRPC statuses with a message: the code
and details are set on the Serve gRPC context before raising, which Serve's proxy passes to
the client as they are (an exception alone would reach the client as INTERNAL).

The same deployment serves the OpenAI-compatible HTTP API (serve/openai/) through Serve's
HTTP proxy: one application, so the gRPC proxy routes without extra metadata. The FastAPI app
is built per replica, after ``__init__``, and shares the helpers below with the RPCs.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

from ray import serve

from model.sampling_params import SamplingParams
from model.tokenizer import load_model_tokenizer
from serve.config import IngressSettings
from serve.engine.block_hash import hash_prompt_blocks
from serve.errors import (
    RequestTooLargeError,
    ServiceError,
    Status,
    UnauthenticatedError,
    downstream_error,
    grpc_code,
    invalid,
)
from serve.grpc_api import llm_pb2
from serve.ingress.channels import IngressChannels
from serve.ingress.collector import CHANNEL_END_GRACE_S, CoalescingStream
from serve.ingress.convert import chat_messages, check_identifier, response, sampling_params
from serve.ingress.grpc_service import MalformedRequest
from serve.protocol import ServeChunk, ServeRequest
from serve.stream_pacing import StreamPacer

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


@serve.deployment(name="Ingress")
@serve.ingress()  # the ASGI app comes from __serve_build_asgi_app__, once per replica
class Ingress:
    def __init__(self, llm_server: Any, settings: IngressSettings) -> None:
        self.llm = llm_server.options(stream=True)
        self.settings = settings
        self.tokenizer = load_model_tokenizer(settings.tokenizer)
        self.block_size = settings.block_size
        self.max_model_len = settings.max_model_len
        self.api_key = settings.api_key
        limits = settings.limits
        self.max_prompt_tokens = min(limits.max_prompt_tokens or self.max_model_len,
                                     self.max_model_len - 1)
        self.max_new_tokens = limits.max_new_tokens
        self.max_message_bytes = limits.max_message_bytes
        self.pacer = StreamPacer(settings.stream_items_per_s)
        self.channels = IngressChannels(self.llm) if settings.output_channels else None

    def __serve_build_asgi_app__(self) -> Any:
        from serve.openai.app import build_openai_app

        return build_openai_app(self)

    # ---- RPCs ---------------------------------------------------------------------------

    async def Generate(self, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        def build() -> ServeRequest:
            if request.WhichOneof("prompt") == "token_ids":
                ids = list(request.token_ids.ids)
            elif request.WhichOneof("prompt") == "text":
                ids = self.tokenizer.encode(request.text)
            else:
                raise invalid("set prompt: either text or token_ids")
            return self._serve_request(ids, request)

        async for message in self._stream(grpc_context, request, build):
            yield message

    async def Chat(self, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        def build() -> ServeRequest:
            ids = self.chat_prompt(request.messages, request.continue_final_message)
            return self._serve_request(ids, request)

        async for message in self._stream(grpc_context, request, build):
            yield message

    async def Tokenize(self, request: Any, grpc_context: Any = None) -> Any:
        try:
            self._admit(grpc_context, request)
            if request.WhichOneof("input") == "chat":
                ids = self.chat_prompt(request.chat.messages,
                                       request.chat.continue_final_message)
            else:
                ids = self.tokenizer.encode(request.text, add_bos=request.add_bos)
        except Exception as exc:
            self._fail_with(grpc_context, exc, "tokenize")
        return llm_pb2.TokenizeResponse(token_ids=ids)

    async def ModelInfo(self, request: Any, grpc_context: Any = None) -> Any:
        try:
            self._admit(grpc_context, request)
        except Exception as exc:
            self._fail_with(grpc_context, exc, "model-info")
        return llm_pb2.ModelInfoResponse(
            model=self.settings.model_name, max_model_len=self.max_model_len,
            vocab_size=self.tokenizer.vocab_size, block_size=self.block_size,
            tensor_parallel_size=self.settings.tensor_parallel_size, version=VERSION)

    async def output_channel_stats(self) -> dict[str, Any]:
        """What this replica's output channels carried so far (operators' tools, tests)."""
        if self.channels is None:
            return {"open_replicas": [], "num_batches": 0, "num_chunks": 0}
        return self.channels.stats()

    # ---- shared -----------------------------------------------------------------------------

    def _authenticate(self, grpc_context: Any) -> None:
        if not self.api_key:
            return
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context else {}
        if not self.api_key_matches(metadata):
            raise UnauthenticatedError("missing or wrong API key: send metadata "
                                       "'authorization: Bearer <key>'")

    def api_key_matches(self, headers: Mapping[str, str]) -> bool:
        """gRPC metadata or HTTP headers (lower-case names) offer the key as
        ``authorization: Bearer <key>`` or ``x-api-key: <key>``; True without a key set."""
        if not self.api_key:
            return True
        offered = headers.get("x-api-key") or ""
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            offered = bearer[7:]
        return hmac.compare_digest(offered.encode(), self.api_key.encode())

    def chat_prompt(self, messages: Any, continue_final_message: bool = False) -> list[int]:
        """Token ids of a conversation: items with ``role`` and ``content`` attributes.
        ``continue_final_message``: the answer continues the last (assistant) message."""
        bound = self.settings.limits.max_messages
        if len(messages) > bound:
            raise invalid(f"{len(messages)} messages; this service takes at most {bound}: "
                          "drop or merge earlier turns")
        try:
            return self.tokenizer.apply_chat_template(chat_messages(messages),
                                                      continue_final_message)
        except ValueError as exc:
            raise invalid(f"messages: {exc}") from None

    def check_prompt(self, ids: list[int]) -> None:
        if len(ids) > self.max_prompt_tokens:
            raise invalid(f"the prompt has {len(ids)} tokens; the limit is "
                          f"{self.max_prompt_tokens} (context {self.max_model_len} tokens, "
                          "with room for the answer): shorten the prompt")
        if not ids:
            raise invalid("the prompt is empty")

    def new_request(self, ids: list[int], params: SamplingParams, request_id: str,
                    session_id: str, cache_salt: str) -> ServeRequest:
        """The request for the router and LLMServer; identifiers are "" when absent."""
        salt = check_identifier("cache_salt", cache_salt)
        return ServeRequest(
            # The engine's key is always made here: a client's id may repeat (its own
            # retries, or any other tenant's pick) and must not let one abort another.
            request_id=uuid.uuid4().hex,
            client_request_id=check_identifier("request_id", request_id) or "",
            prompt_token_ids=ids, params=params,
            session_id=check_identifier("session_id", session_id),
            cache_salt=salt,
            block_hashes=hash_prompt_blocks(ids, self.block_size, salt))

    def _serve_request(self, ids: list[int], request: Any) -> ServeRequest:
        self.check_prompt(ids)
        params = sampling_params(request.sampling, self.settings.limits)
        return self.new_request(ids, params, request.request_id, request.session_id,
                                request.cache_salt)

    def _check_size(self, request: Any) -> None:
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise RequestTooLargeError(f"the request is {size} bytes; this service accepts at "
                                       f"most {self.max_message_bytes} bytes: send a shorter "
                                       "prompt")

    def _admit(self, grpc_context: Any, request: Any) -> None:
        if isinstance(request, MalformedRequest):
            raise invalid(request.explain())
        self._authenticate(grpc_context)
        self._check_size(request)

    async def _stream(self, grpc_context: Any, request: Any,
                      build: Callable[[], ServeRequest]) -> AsyncIterator[Any]:
        try:
            self._admit(grpc_context, request)
            serve_request = build()
        except Exception as exc:
            self._fail_with(grpc_context, exc, "new")
        stream = self.open_stream(serve_request)
        finished = False
        try:
            async for chunk in stream:
                if chunk.error_code is not None:
                    finished = True
                    self._fail(grpc_context, chunk.error_code, chunk.error or "")
                yield response(chunk)
            finished = True
        except ServiceError:
            raise  # a status already set by _fail
        except Exception as exc:
            finished = True  # the call failed; nothing left to cancel
            self._fail_with(grpc_context, exc, serve_request.request_id)
        finally:
            # The client left (the proxy cancelled or closed this generator): cancel the
            # LLMServer call now rather than wait for Serve to notice, so the engine aborts
            # the request and frees its blocks at once.
            if not finished:
                stream.cancel()

    def open_stream(self, serve_request: ServeRequest) -> CoalescingStream:
        """The LLMServer's chunks for the request, paced and coalesced
        (serve/ingress/collector.py), from its call or this Ingress's output channel."""
        channels = self.channels
        if channels is None:
            return CoalescingStream(self.llm.generate.remote(serve_request), self.pacer)
        request_id = serve_request.request_id
        serve_request.channel_id = channels.channel_id

        def from_call(chunk: ServeChunk) -> None:
            channels.saw_replica(chunk.replica_id)

        stream = CoalescingStream(self.llm.generate.remote(serve_request), self.pacer,
                                  on_call_chunk=from_call,
                                  on_close=lambda: channels.unregister(request_id),
                                  end_grace_s=CHANNEL_END_GRACE_S)
        channels.register(request_id, stream)
        return stream

    def _fail_with(self, grpc_context: Any, exc: BaseException, request_id: str) -> NoReturn:
        """Any exception as a clean status: bad input (ValueError from the tokenizer or the
        model layer) is INVALID_ARGUMENT, the rest goes through ``downstream_error``."""
        if isinstance(exc, ValueError) and not isinstance(exc, ServiceError):
            self._fail(grpc_context, Status.INVALID_ARGUMENT, str(exc))
        error = downstream_error(exc, request_id)
        self._fail(grpc_context, error.status, error.message)

    @staticmethod
    def _fail(grpc_context: Any, status: Status, message: str) -> NoReturn:
        """Set the status for Serve's proxy and raise; without a context (direct calls in
        tests), the error itself carries status and message."""
        if grpc_context is not None:
            grpc_context.set_code(grpc_code(status))
            grpc_context.set_details(message)
        raise ServiceError(message, status)
