"""How the client SDK makes calls: requests from keyword arguments, metadata, deadlines, retries.

Only the arguments that were given (not None) are set, so the server's defaults apply to the
rest: ``SamplingParams`` fields are proto3 ``optional``, and ``temperature=0.0`` (greedy) is
sent as set, not dropped as a default. Obvious mistakes fail here, before a round trip, with a
``ValueError`` that names the argument; everything else is the server's to judge.
"""

from __future__ import annotations

import difflib
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import grpc

from serve.client.structured import FORMAT_KEYWORDS, JsonSchema, ResponseFormat, format_fields
from serve.client.types import rpc_code
from serve.grpc_api import llm_pb2

# The API key travels as ``authorization: Bearer <key>``, the standard gRPC/HTTP header, which
# proxies and the ingress's auth check both know.
API_KEY_METADATA_KEY = "authorization"
API_KEY_SCHEME = "Bearer"
# Ray Serve's gRPC proxy picks the application by this metadata key when several are running.
APPLICATION_METADATA_KEY = "application"

Messages = Sequence[Mapping[str, str]]  # [{"role": "user", "content": "Hi!"}, ...]
DEFAULT_TARGET = "localhost:9000"
MAX_BACKOFF_S = 10.0
CHAT_ROLES = frozenset({"system", "user", "assistant"})
SAMPLING_FIELDS = frozenset(llm_pb2.SamplingParams.DESCRIPTOR.fields_by_name)
REQUEST_FIELDS = frozenset({"session_id", "request_id", "cache_salt"})
# Inclusive bounds of the obvious mistakes; the server checks the finer rules.
_BOUNDS: dict[str, tuple[float, float]] = {
    "max_tokens": (1, math.inf),
    "min_tokens": (0, math.inf),
    "temperature": (0.0, math.inf),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "logprobs": (0, 20),
    "n": (1, math.inf),
}


class SamplingOptions(TypedDict, total=False):
    """The sampling keywords every generate/chat call takes; None means "server default"."""

    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    stop_token_ids: Sequence[int] | None
    ignore_eos: bool | None
    logprobs: int | None
    min_tokens: int | None
    include_stop_str_in_output: bool | None
    # The output's format, at most one (serve/client/structured.py).
    json_schema: Mapping[str, Any] | str | JsonSchema | Any | None  # Any: a pydantic model
    json_object: bool | None
    regex: str | None
    choice: Sequence[str] | None
    grammar: str | None
    response_format: ResponseFormat | None
    # Token masks: token id -> bias in [-100, 100]; the only ids that may be sampled; words
    # never generated.
    logit_bias: Mapping[int, float] | None
    allowed_token_ids: Sequence[int] | None
    bad_words: Sequence[str] | None
    n: int | None  # choices; their chunks arrive interleaved, each with its index


class GenerateOptions(SamplingOptions, total=False):
    """Sampling plus the per-request keywords and the call's deadline."""

    session_id: str | None  # keeps a conversation on the replica holding its KV cache
    cache_salt: str | None  # tenants with different salts never share prefix-cache blocks
    request_id: str | None  # echoed back; the server makes one when empty
    timeout_s: float | None  # this call's deadline; default: the client's timeout_s
    # Chat only: the last message is the assistant's, and the answer continues its text.
    continue_final_message: bool | None


def _unknown(name: str, known: frozenset[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown argument {name!r}{hint} (known: {', '.join(sorted(known))})")


def _set_field(message: Any, name: str, value: Any) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a dict, got {value!r}")
        getattr(message, name).update(value)
        return
    if field.is_repeated:
        if name == "stop" and isinstance(value, str):
            value = [value]  # stop="\n" is the common case; "\n" as a list would be chars
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a list, got {value!r}")
        getattr(message, name).extend(value)
        return
    numeric = field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE)
    if numeric and (isinstance(value, bool) or not math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    low, high = _BOUNDS.get(name, (-math.inf, math.inf))
    if isinstance(value, (int, float)) and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    setattr(message, name, value)


def _checked_set(message: Any, name: str, value: Any) -> None:
    try:
        _set_field(message, name, value)
    except (TypeError, ValueError) as exc:  # protobuf's own type and range checks
        message_text = str(exc) if str(exc).startswith(name) else f"{name}={value!r}: {exc}"
        raise ValueError(message_text) from None


def sampling_message(options: Mapping[str, Any]) -> llm_pb2.SamplingParams | None:
    """The ``SamplingParams`` with exactly the given fields set; None when none was given."""
    for name in options:
        if name not in SAMPLING_FIELDS and name not in FORMAT_KEYWORDS:
            raise _unknown(name, SAMPLING_FIELDS | REQUEST_FIELDS | {"timeout_s"}
                           | set(FORMAT_KEYWORDS))
    options = format_fields(options)
    params = llm_pb2.SamplingParams()
    given = False
    for name, value in options.items():
        if value is not None:
            _checked_set(params, name, value)
            given = True
    return params if given else None


def _fill(request: Any, options: Mapping[str, Any]) -> Any:
    """Sets the per-request strings and the sampling params of a Generate/Chat request."""
    sampling = {name: value for name, value in options.items() if name not in REQUEST_FIELDS}
    params = sampling_message(sampling)
    if params is not None:
        request.sampling.CopyFrom(params)
    for name in REQUEST_FIELDS:
        value = options.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            setattr(request, name, value)
    return request


def generate_request(
    prompt: str | Sequence[int], options: Mapping[str, Any]
) -> llm_pb2.GenerateRequest:
    """A text prompt or a list of token ids (sent as is, no BOS added client-side)."""
    request = llm_pb2.GenerateRequest()
    if isinstance(prompt, str):
        request.text = prompt
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
        bad = [token for token in prompt if isinstance(token, bool) or not isinstance(token, int)]
        if bad or any(token < 0 for token in prompt):
            raise ValueError(f"token ids must be non-negative ints, got {(bad or prompt)[:5]!r}")
        request.token_ids.ids.extend(prompt)
    else:
        raise ValueError(f"prompt must be a str or a list of token ids, got {type(prompt)}")
    return _fill(request, options)


def chat_message_list(messages: Messages) -> list[llm_pb2.ChatMessage]:
    if isinstance(messages, (str, Mapping)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    converted = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{index}] must have exactly 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{index}] role {role!r} is not one of {sorted(CHAT_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}] content must be a string, got {type(content)}")
        converted.append(llm_pb2.ChatMessage(role=role, content=content))
    return converted


def chat_request(messages: Messages, options: Mapping[str, Any]) -> llm_pb2.ChatRequest:
    request = llm_pb2.ChatRequest()
    request.messages.extend(chat_message_list(messages))
    options = dict(options)
    continue_final = options.pop("continue_final_message", None)
    if continue_final is not None:
        if not isinstance(continue_final, bool):
            raise ValueError(f"continue_final_message must be a bool, got {continue_final!r}")
        request.continue_final_message = continue_final
    return _fill(request, options)


def tokenize_request(text_or_messages: str | Messages, add_bos: bool) -> llm_pb2.TokenizeRequest:
    """Plain text, or chat messages (tokenized after the chat template is applied)."""
    if isinstance(text_or_messages, str):
        return llm_pb2.TokenizeRequest(text=text_or_messages, add_bos=add_bos)
    chat = llm_pb2.ChatRequest(messages=chat_message_list(text_or_messages))
    return llm_pb2.TokenizeRequest(chat=chat, add_bos=add_bos)


def call_metadata(api_key: str | None, application: str | None) -> tuple[tuple[str, str], ...]:
    metadata: list[tuple[str, str]] = []
    if api_key:
        metadata.append((API_KEY_METADATA_KEY, f"{API_KEY_SCHEME} {api_key}"))
    if application:
        metadata.append((APPLICATION_METADATA_KEY, application))
    return tuple(metadata)


def check_timeout(timeout_s: float | None, default_s: float) -> float:
    """Every call has a deadline: a hung server must not hang the caller."""
    value = default_s if timeout_s is None else timeout_s
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {value!r}")
    return float(value)


def remaining_s(deadline: float) -> float:
    # Retries share the caller's one deadline instead of each getting a fresh timeout.
    return max(deadline - time.monotonic(), 0.001)


class ClientBase:
    """Settings and retry policy shared by ``LLMClient`` and ``AsyncLLMClient``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        application: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """``application``: the Ray Serve app to route to; ``credentials``: TLS, e.g.
        ``grpc.ssl_channel_credentials()``; ``channel_options``: raw gRPC channel options."""
        if max_retries < 0 or retry_backoff_s < 0:
            raise ValueError("max_retries and retry_backoff_s must be >= 0")
        self.target = target
        self.timeout_s = check_timeout(timeout_s, timeout_s)
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.metadata = call_metadata(api_key, application)
        self._credentials = credentials
        self._channel_options = list(channel_options)
        self._open()

    def _open(self) -> None:
        """Makes the channel, where a subclass can do so at construction time."""

    def _retry_delay(
        self, error: grpc.RpcError, attempt: int, received: bool, deadline: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when ``error`` is final."""
        if (
            received
            or attempt >= self.max_retries
            or rpc_code(error) != grpc.StatusCode.UNAVAILABLE
        ):
            return None
        # Jittered, so that clients which failed together do not come back together.
        delay = min(self.retry_backoff_s * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
        return delay if time.monotonic() + delay < deadline else None

    def _prepare(self, options: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
        rest = dict(options)
        return check_timeout(rest.pop("timeout_s", None), self.timeout_s), rest
