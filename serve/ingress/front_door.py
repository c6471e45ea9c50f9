"""What both public servers of an Ingress replica do with a request before and after the
engine: authenticate, tokenize and validate, hash the prompt's blocks for the router, and
open the stream of the LLMServer's chunks (its call, or this replica's output channel).

The gRPC servicer (serve/ingress/grpc_server.py) and the OpenAI app (serve/openai/app.py)
share one ``FrontDoor``; neither decides a limit or a status on its own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from model.sampling_params import SamplingParams
from model.tokenizer import load_model_tokenizer
from serve.config import IngressSettings
from serve.engine.block_hash import hash_prompt_blocks
from serve.errors import RequestTooLargeError, UnauthenticatedError, invalid
from serve.ingress.channels import IngressChannels
from serve.ingress.collector import CHANNEL_END_GRACE_S, RequestCollector
from serve.ingress.convert import chat_messages, check_identifier, sampling_params
from serve.protocol import ServeChunk, ServeRequest

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
# How often the Ingress asks whether an LLMServer replica answers behind it (readiness), and
# how long one answer counts.
READY_PROBE_PERIOD_S = 2.0
READY_PROBE_TIMEOUT_S = 5.0


class FrontDoor:
    def __init__(self, llm: Any, settings: IngressSettings) -> None:
        """``llm``: the LLMServer deployment handle."""
        self.llm = llm.options(stream=True)
        self._llm_unary = llm.options(stream=False)
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
        self.channels = IngressChannels(self.llm) if settings.output_channels else None
        self._llm_seen_at: float | None = None  # when an LLMServer replica last answered
        self._probe: asyncio.Task[None] | None = None

    # ---- readiness ----------------------------------------------------------------------

    def start_ready_probe(self) -> None:
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    def stop_ready_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()

    async def _probe_loop(self) -> None:
        while True:
            try:
                if await asyncio.wait_for(self._llm_unary.ready.remote(), READY_PROBE_TIMEOUT_S):
                    self._llm_seen_at = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no replica yet, or it is failing: not ready
                logger.debug("no live LLMServer behind this Ingress: %r", exc)
            await asyncio.sleep(READY_PROBE_PERIOD_S)

    def ready(self) -> bool:
        """Whether this replica can serve: a live LLMServer replica answered recently (or a
        stream got a chunk)."""
        seen = self._llm_seen_at
        return seen is not None and time.monotonic() - seen < READY_PROBE_TIMEOUT_S + \
            2 * READY_PROBE_PERIOD_S

    # ---- admission ----------------------------------------------------------------------

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

    def authenticate_grpc(self, metadata: Mapping[str, str]) -> None:
        if not self.api_key_matches(metadata):
            raise UnauthenticatedError("missing or wrong API key: send metadata "
                                       "'authorization: Bearer <key>'")

    def check_size(self, size: int) -> None:
        if size > self.max_message_bytes:
            raise RequestTooLargeError(f"the request is {size} bytes; this service accepts at "
                                       f"most {self.max_message_bytes} bytes: send a shorter "
                                       "prompt")

    # ---- request building ---------------------------------------------------------------

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

    def generate_request(self, message: Any) -> ServeRequest:
        """A ``GenerateRequest`` message as the request to serve."""
        if message.WhichOneof("prompt") == "token_ids":
            ids = list(message.token_ids.ids)
        elif message.WhichOneof("prompt") == "text":
            ids = self.tokenizer.encode(message.text)
        else:
            raise invalid("set prompt: either text or token_ids")
        return self._from_message(ids, message)

    def chat_request(self, message: Any) -> ServeRequest:
        """A ``ChatRequest`` message as the request to serve."""
        ids = self.chat_prompt(message.messages, message.continue_final_message)
        return self._from_message(ids, message)

    def _from_message(self, ids: list[int], message: Any) -> ServeRequest:
        self.check_prompt(ids)
        params = sampling_params(message.sampling, self.settings.limits)
        return self.new_request(ids, params, message.request_id, message.session_id,
                                message.cache_salt)

    # ---- output ---------------------------------------------------------------------------

    def open_stream(self, serve_request: ServeRequest) -> RequestCollector:
        """The LLMServer's chunks for the request, merged as they arrive
        (serve/ingress/collector.py), from its call or this Ingress's output channel."""
        channels = self.channels
        if channels is None:
            return RequestCollector(self.llm.generate.remote(serve_request),
                                    on_call_chunk=self._saw_chunk)
        request_id = serve_request.request_id
        serve_request.channel_id = channels.channel_id

        def from_call(chunk: ServeChunk) -> None:
            self._saw_chunk(chunk)
            channels.saw_replica(chunk.replica_id)

        stream = RequestCollector(self.llm.generate.remote(serve_request),
                                  on_call_chunk=from_call,
                                  on_close=lambda: channels.unregister(request_id),
                                  end_grace_s=CHANNEL_END_GRACE_S)
        channels.register(request_id, stream)
        return stream

    def _saw_chunk(self, chunk: ServeChunk) -> None:
        if chunk.error_code is None:
            self._llm_seen_at = time.monotonic()

    def output_channel_stats(self) -> dict[str, Any]:
        if self.channels is None:
            return {"open_replicas": [], "num_batches": 0, "num_chunks": 0}
        return self.channels.stats()
