"""The blocking client, ``LLMClient``."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from serve.client.conversation import Conversation
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

class LLMClient(ClientBase):
    """Blocking client; thread-safe (one channel, many concurrent calls). Close when done."""

    def _open(self) -> None:
        if self._credentials is not None:
            self._channel = grpc.secure_channel(
                self.target, self._credentials, self._channel_options
            )
        else:
            self._channel = grpc.insecure_channel(self.target, self._channel_options)
        self._stub = llm_pb2_grpc.LLMServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def generate(
        self, prompt: str | Sequence[int], **options: Unpack[GenerateOptions]
    ) -> Completion:
        """Completes ``prompt`` (text, or token ids sent as is) and returns the whole result."""
        completion = Completion()
        for chunk in self.stream_generate(prompt, **options):
            completion.add(chunk)
        return completion

    def stream_generate(
        self, prompt: str | Sequence[int], **options: Unpack[GenerateOptions]
    ) -> Generator[StreamChunk, None, None]:
        # Built here, not in the generator, so that a ValueError is raised by this call.
        timeout_s, rest = self._prepare(options)
        return self._stream("Generate", generate_request(prompt, rest), timeout_s)

    def chat(self, messages: Messages, **options: Unpack[GenerateOptions]) -> Completion:
        """Applies the model's chat template to ``[{"role": ..., "content": ...}]``, generates."""
        completion = Completion()
        for chunk in self.stream_chat(messages, **options):
            completion.add(chunk)
        return completion

    def stream_chat(
        self, messages: Messages, **options: Unpack[GenerateOptions]
    ) -> Generator[StreamChunk, None, None]:
        timeout_s, rest = self._prepare(options)
        return self._stream("Chat", chat_request(messages, rest), timeout_s)

    def tokenize(
        self,
        text_or_messages: str | Messages,
        *,
        add_bos: bool = False,
        timeout_s: float | None = None,
    ) -> list[int]:
        """Token ids of a text, or of chat messages after the chat template."""
        request = tokenize_request(text_or_messages, add_bos)
        return list(self._unary("Tokenize", request, timeout_s).token_ids)

    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        return model_info_from_proto(
            self._unary("ModelInfo", llm_pb2.ModelInfoRequest(), timeout_s)
        )

    def conversation(
        self, system: str | None = None, session_id: str | None = None, **options: Any
    ) -> Conversation:
        """A chat that keeps its history; ``options`` are defaults for every turn."""
        return Conversation(self, system, session_id or str(uuid.uuid4()), options)

    def _unary(self, method: str, request: Any, timeout_s: float | None) -> Any:
        deadline = time.monotonic() + check_timeout(timeout_s, self.timeout_s)
        rpc = getattr(self._stub, method)
        for attempt in itertools.count():
            try:
                return rpc(request, timeout=remaining_s(deadline), metadata=self.metadata)
            except grpc.RpcError as error:
                delay = self._retry_delay(error, attempt, False, deadline)
                if delay is None:
                    raise error_from_rpc(error) from None
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _stream(
        self, method: str, request: Any, timeout_s: float
    ) -> Generator[StreamChunk, None, None]:
        deadline = time.monotonic() + timeout_s
        rpc = getattr(self._stub, method)
        call = None
        try:
            for attempt in itertools.count():
                call = rpc(request, timeout=remaining_s(deadline), metadata=self.metadata)
                received = False
                delivered = 0
                try:
                    for response in call:
                        received = True
                        chunk = chunk_from_proto(response)
                        delivered += len(chunk.token_ids)
                        yield chunk
                    return
                except grpc.RpcError as error:
                    delay = self._retry_delay(error, attempt, received, deadline)
                    if delay is None:
                        raise error_from_rpc(error, delivered) from None
                time.sleep(delay)
        finally:
            # Reached on completion, error, close() and garbage collection (a ``break``):
            # cancelling tells the server to abort; on a finished call it does nothing.
            if call is not None:
                call.cancel()
