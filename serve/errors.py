"""The one error table: every status a request can end with, in each form the front ends
speak (gRPC code, HTTP status, OpenAI error type and code).

The engine's errors (serve/engine/errors.py) and the front door's own (below) carry their
status; the LLMServer, the Ingress and the OpenAI layer read this table and map nothing
themselves. No grpc import here: the gRPC code is looked up by name where it is set.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from serve.engine.errors import (
    EngineDeadError,
    InternalError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    ServiceError,
    Status,
)

__all__ = [
    "ERRORS", "EngineDeadError", "ErrorForm", "InternalError", "InvalidRequestError",
    "ModelNotFoundError", "PromptTooLongError", "QueueFullError", "RequestTooLargeError",
    "REPLICA_FAILED", "ServiceError", "Status", "StreamLostError", "UnauthenticatedError",
    "downstream_error", "form_of", "grpc_code", "invalid", "status_of",
]  # fmt: skip

logger = logging.getLogger(__name__)

# What a client hears when the replica (or a worker of it) serving its request fails; the
# cause goes to the server's log, never to the client.
REPLICA_FAILED = "the replica serving this request failed; retry"


class StreamLostError(RuntimeError):
    """A request's output stopped coming before its end: the channel carrying it went
    away (serve/ingress/channels.py). Retryable, like a failed replica."""


@dataclass(frozen=True)
class ErrorForm:
    http_status: int
    openai_type: str
    openai_code: str
    retryable: bool  # 429 and 503 carry Retry-After


ERRORS: dict[Status, ErrorForm] = {
    Status.INVALID_ARGUMENT: ErrorForm(400, "invalid_request_error", "invalid_argument", False),
    Status.UNAUTHENTICATED: ErrorForm(401, "authentication_error", "invalid_api_key", False),
    Status.PERMISSION_DENIED: ErrorForm(403, "permission_error", "permission_denied", False),
    Status.NOT_FOUND: ErrorForm(404, "invalid_request_error", "not_found", False),
    Status.RESOURCE_EXHAUSTED: ErrorForm(429, "rate_limit_error", "rate_limit_exceeded", True),
    Status.DEADLINE_EXCEEDED: ErrorForm(504, "server_error", "deadline_exceeded", False),
    Status.UNAVAILABLE: ErrorForm(503, "server_error", "service_unavailable", True),
    Status.INTERNAL: ErrorForm(500, "server_error", "internal_error", False),
}


def form_of(status: Status | str) -> ErrorForm:
    return ERRORS[Status(status)]


def grpc_code(status: Status | str) -> Any:
    """The ``grpc.StatusCode`` of a status (the enum members share their names)."""
    import grpc

    return getattr(grpc.StatusCode, Status(status).value)


class UnauthenticatedError(ServiceError):
    status = Status.UNAUTHENTICATED


class RequestTooLargeError(ServiceError):
    """The request message is over the service's size limit."""

    status = Status.RESOURCE_EXHAUSTED


class ModelNotFoundError(ServiceError):
    status = Status.NOT_FOUND


def invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def downstream_error(exc: BaseException, request_id: str) -> ServiceError:
    """The one place an unexpected exception becomes what the client sees.

    A failure of the call to the LLMServer (the replica died or is gone, Serve refused the
    call) is UNAVAILABLE and retryable; anything else is INTERNAL with a reference that
    matches one line of this server's log. Neither carries a traceback, a path, a pid, an
    address, an actor id or a class name.
    """
    if isinstance(exc, ServiceError):
        return exc
    from ray.exceptions import RayError
    from ray.serve.exceptions import BackPressureError, RayServeException

    if isinstance(exc, BackPressureError):
        return QueueFullError("the service is at capacity (every replica and the queue for "
                              "them are full); retry later")
    if isinstance(exc, (RayError, RayServeException, StreamLostError)):
        logger.warning("request %s: the LLMServer call failed: %r", request_id, exc)
        return EngineDeadError(REPLICA_FAILED)
    reference = uuid.uuid4().hex[:12]
    logger.error("request %s failed (error reference %s)", request_id, reference,
                 exc_info=exc)
    return InternalError(f"internal error (reference {reference}); retry later")


def status_of(exc: BaseException, request_id: str = "") -> ServiceError:
    """The one function from an exception to what the client sees, used by every layer
    (gRPC servicer, OpenAI app, LLMServer): a ``ServiceError`` as it is, bad input (a
    ``ValueError`` from the tokenizer, the model layer or sampling) INVALID_ARGUMENT, the
    rest as ``downstream_error`` says."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc))
    return downstream_error(exc, request_id)
