"""What the client SDK hands back: results as dataclasses, errors as ``ClientError`` subclasses.

Imports only grpc, the generated stubs and the standard library, like the rest of the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from serve.grpc_api import llm_pb2

# --------------------------------------------------------------------------------- results


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens served from the prefix cache instead of being computed.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(slots=True)
class TokenLogprob:
    """The log-probability of one generated token and of its most likely alternatives."""

    token_id: int
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class StreamChunk:
    """One message of a stream: what is new since the previous one."""

    text: str
    token_ids: list[int]
    # Empty while streaming; on the last chunk "stop", "length", "abort" or "error".
    finish_reason: str = ""
    stop_reason: str = ""
    usage: Usage | None = None  # set on the last chunk
    replica_id: str = ""
    request_id: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    index: int = 0  # the choice (0 unless the request asked for n > 1)


@dataclass(slots=True)
class Completion:
    """A whole response: the chunks of a stream joined. With ``n`` > 1 this is choice 0,
    and ``choices`` lists every choice in index order; ``usage`` counts them all."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stop_reason: str = ""
    usage: Usage | None = None
    replica_id: str = ""
    request_id: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # The choices after the first, by index.
    others: dict[int, Completion] = field(default_factory=dict)

    @property
    def choices(self) -> list[Completion]:
        return [self] + [self.others[index] for index in sorted(self.others)]

    def add(self, chunk: StreamChunk) -> None:
        if chunk.index:
            self.usage = chunk.usage or self.usage
            other = self.others.get(chunk.index)
            if other is None:
                other = self.others[chunk.index] = Completion()
            other.add_own(chunk)
        else:
            self.add_own(chunk)

    def add_own(self, chunk: StreamChunk) -> None:
        """A chunk of this choice."""
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        # Fields the server sends once (or repeats unchanged): the latest non-empty wins.
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.stop_reason = chunk.stop_reason or self.stop_reason
        self.usage = chunk.usage or self.usage
        self.replica_id = chunk.replica_id or self.replica_id
        self.request_id = chunk.request_id or self.request_id


@dataclass(slots=True, frozen=True)
class ModelInfo:
    model: str
    max_model_len: int
    vocab_size: int
    block_size: int
    tensor_parallel_size: int
    version: str


def chunk_from_proto(response: llm_pb2.GenerateResponse) -> StreamChunk:
    usage = None
    if response.HasField("usage"):
        usage = Usage(
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            cached_tokens=response.usage.cached_tokens,
        )
    logprobs = [
        TokenLogprob(
            token_id=entry.token_id,
            logprob=entry.logprob,
            top=[TopLogprob(token_id=top.token_id, logprob=top.logprob) for top in entry.top],
        )
        for entry in response.logprobs
    ]
    return StreamChunk(
        text=response.text,
        token_ids=list(response.token_ids),
        finish_reason=response.finish_reason,
        stop_reason=response.stop_reason,
        usage=usage,
        replica_id=response.replica_id,
        request_id=response.request_id,
        logprobs=logprobs,
        index=response.index,
    )


def model_info_from_proto(response: llm_pb2.ModelInfoResponse) -> ModelInfo:
    return ModelInfo(
        model=response.model,
        max_model_len=response.max_model_len,
        vocab_size=response.vocab_size,
        block_size=response.block_size,
        tensor_parallel_size=response.tensor_parallel_size,
        version=response.version,
    )


# ---------------------------------------------------------------------------------- errors


class ClientError(Exception):
    """A call failed; ``code`` is the gRPC status, ``details`` the server's message.

    Catch a subclass (``except InvalidArgument``) to handle one kind; codes without their
    own subclass (UNKNOWN, ABORTED, ...) raise ``ClientError`` itself.
    """

    def __init__(self, code: grpc.StatusCode, details: str, tokens_delivered: int = 0) -> None:
        note = ""
        if tokens_delivered:
            # Redoing the call would repeat them: the SDK retries only before any token.
            note = (f" (after {tokens_delivered} tokens of this stream were delivered; "
                    "not retried)")
        super().__init__(f"{code.name}: {details}{note}")
        self.code = code
        self.details = details
        self.tokens_delivered = tokens_delivered


class InvalidArgument(ClientError):
    """The request is wrong; the message says what to change. Not worth retrying as is."""


class OutOfRange(ClientError):
    pass


class ResourceExhausted(ClientError):
    """The prompt does not fit, or the server is over capacity or over a quota."""


class Unauthenticated(ClientError):
    """No API key, or a wrong one."""


class PermissionDenied(ClientError):
    pass


class NotFound(ClientError):
    pass


class FailedPrecondition(ClientError):
    pass


class DeadlineExceeded(ClientError):
    """The call's deadline (``timeout_s``) passed before it finished."""


class Unavailable(ClientError):
    """The server could not be reached or is not ready; raised once the retries ran out."""


class Cancelled(ClientError):
    pass


class Unimplemented(ClientError):
    pass


class InternalError(ClientError):
    """The server failed (INTERNAL, UNKNOWN or DATA_LOSS)."""


ERRORS_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_from_rpc(error: grpc.RpcError, tokens_delivered: int = 0) -> ClientError:
    """The ``ClientError`` for a failed call (sync ``grpc.RpcError`` or ``AioRpcError``);
    ``tokens_delivered``: how many tokens of the failed stream the caller already has."""
    # Every RpcError grpc raises for a call is also a grpc.Call with code() and details().
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or str(error)
    return ERRORS_BY_CODE.get(code, ClientError)(code, details, tokens_delivered)


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code_of = getattr(error, "code", None)
    return code_of() if callable(code_of) else None
