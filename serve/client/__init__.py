"""Client SDK of the service: ``LLMClient`` (blocking) and ``AsyncLLMClient`` (asyncio).

    from serve.client import InvalidArgument, LLMClient

    with LLMClient("localhost:9000", api_key="secret") as client:
        print(client.generate("The capital of France is", max_tokens=8).text)
        for chunk in client.stream_chat([{"role": "user", "content": "Hi!"}], temperature=0):
            print(chunk.text, end="", flush=True)
        # Output that follows a JSON schema (or regex=, choice=, grammar=: structured.py)
        person = json.loads(client.generate("A person:", json_schema=schema).text)
        chat = client.conversation(system="Answer in one word.")
        chat.send("Name a prime.")   # every turn carries the same session id, so it lands on
        chat.send("Another one.")    # the replica that holds the conversation's KV cache

Every call has a deadline (``timeout_s``; the client's default when not given). UNAVAILABLE is
retried with exponential backoff, a stream only until its first chunk arrived, so output is
never duplicated; every other failure raises the ``ClientError`` subclass of its status code.
Leaving a stream early (``break``, ``close()``, ``aclose()``, cancelling the task) cancels the
RPC, so the server aborts the request and frees its KV blocks at once.

Imports only grpc, the generated stubs and the standard library.
"""

from __future__ import annotations

from serve.client.aio import (
    AsyncLLMClient,
)
from serve.client.conversation import (
    AsyncConversation,
    Conversation,
)
from serve.client.requests import (
    API_KEY_METADATA_KEY,
    APPLICATION_METADATA_KEY,
    DEFAULT_TARGET,
    GenerateOptions,
    SamplingOptions,
)
from serve.client.structured import (
    JsonSchema,
    JsonSchemaFormat,
    ResponseFormat,
)
from serve.client.sync import (
    LLMClient,
)
from serve.client.types import (
    Cancelled,
    ClientError,
    Completion,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    ModelInfo,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StreamChunk,
    TokenLogprob,
    TopLogprob,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Usage,
)

__all__ = [
    "API_KEY_METADATA_KEY", "APPLICATION_METADATA_KEY", "DEFAULT_TARGET", "AsyncConversation",
    "AsyncLLMClient", "Cancelled", "ClientError", "Completion", "Conversation",
    "DeadlineExceeded", "FailedPrecondition", "GenerateOptions", "InternalError",
    "InvalidArgument", "JsonSchema", "JsonSchemaFormat", "LLMClient", "ModelInfo", "NotFound",
    "OutOfRange", "PermissionDenied", "ResourceExhausted", "ResponseFormat", "SamplingOptions",
    "StreamChunk", "TokenLogprob", "TopLogprob", "Unauthenticated", "Unavailable",
    "Unimplemented", "Usage",
]  # fmt: skip
