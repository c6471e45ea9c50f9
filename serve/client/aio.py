"""The asyncio flavour of the client SDK; see ``serve.client`` for the whole story."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from serve.client.conversation import AsyncConversation
from serve.client.requests import (
    ClientBase,
    GenerateOptions,
    Messages,
    chat_request,
    check_timeout,
    generate_request,
    remaining_s,
    tokenize_request,
)
from serve.client.types import (
    Completion,
    ModelInfo,
    StreamChunk,
    chunk_from_proto,
    error_from_rpc,
    model_info_from_proto,
)
from serve.grpc_api import llm_pb2, llm_pb2_grpc

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncLLMClient(ClientBase):
    """asyncio client with the surface of ``LLMClient``; use it from one event loop.

    The channel is made on first use, inside the running loop, because a grpc.aio channel
    belongs to the loop that created it.
    """

    def _open(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._stub: llm_pb2_grpc.LLMServiceStub | None = None

    def _rpc(self, method: str) -> Any:
        if self._stub is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, self._channel_options
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.target, self._channel_options)
            self._stub = llm_pb2_grpc.LLMServiceStub(self._channel)
        return getattr(self._stub, method)

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def generate(
        self, prompt: str | Sequence[int], **options: Unpack[GenerateOptions]
    ) -> Completion:
        return await _collect(self.stream_generate(prompt, **options))

    def stream_generate(
        self, prompt: str | Sequence[int], **options: Unpack[GenerateOptions]
    ) -> AsyncGenerator[StreamChunk, None]:
        timeout_s, rest = self._prepare(options)
        return self._stream("Generate", generate_request(prompt, rest), timeout_s)

    async def chat(self, messages: Messages, **options: Unpack[GenerateOptions]) -> Completion:
        return await _collect(self.stream_chat(messages, **options))

    def stream_chat(
        self, messages: Messages, **options: Unpack[GenerateOptions]
    ) -> AsyncGenerator[StreamChunk, None]:
        timeout_s, rest = self._prepare(options)
        return self._stream("Chat", chat_request(messages, rest), timeout_s)

    async def tokenize(
        self,
        text_or_messages: str | Messages,
        *,
        add_bos: bool = False,
        timeout_s: float | None = None,
    ) -> list[int]:
        request = tokenize_request(text_or_messages, add_bos)
        return list((await self._unary("Tokenize", request, timeout_s)).token_ids)

    async def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        request = llm_pb2.ModelInfoRequest()
        return model_info_from_proto(await self._unary("ModelInfo", request, timeout_s))

    def conversation(
        self, system: str | None = None, session_id: str | None = None, **options: Any
    ) -> AsyncConversation:
        return AsyncConversation(self, system, session_id or str(uuid.uuid4()), options)

    async def _unary(self, method: str, request: Any, timeout_s: float | None) -> Any:
        deadline = time.monotonic() + check_timeout(timeout_s, self.timeout_s)
        for attempt in itertools.count():
            try:
                return await self._rpc(method)(
                    request, timeout=remaining_s(deadline), metadata=self.metadata
                )
            except grpc.RpcError as error:
                delay = self._retry_delay(error, attempt, False, deadline)
                if delay is None:
                    raise error_from_rpc(error) from None
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _stream(
        self, method: str, request: Any, timeout_s: float
    ) -> AsyncGenerator[StreamChunk, None]:
        deadline = time.monotonic() + timeout_s
        call = None
        try:
            for attempt in itertools.count():
                call = self._rpc(method)(
                    request, timeout=remaining_s(deadline), metadata=self.metadata
                )
                received = False
                delivered = 0
                try:
                    async for response in call:
                        received = True
                        chunk = chunk_from_proto(response)
                        delivered += len(chunk.token_ids)
                        yield chunk
                    return
                except grpc.RpcError as error:
                    delay = self._retry_delay(error, attempt, received, deadline)
                    if delay is None:
                        raise error_from_rpc(error, delivered) from None
                await asyncio.sleep(delay)
        finally:
            # Reached on completion, error, aclose(), task cancellation, and when the loop
            # finalizes an abandoned generator (a ``break``).
            if call is not None:
                call.cancel()


async def _collect(chunks: AsyncIterable[StreamChunk]) -> Completion:
    completion = Completion()
    async for chunk in chunks:
        completion.add(chunk)
    return completion
