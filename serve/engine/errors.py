"""The errors a request can end with. Each class carries its status; ``serve/errors.py`` holds
the one table that turns a status into its gRPC code, HTTP status and OpenAI error type.

Messages say what to change and never hold a traceback, a path or an internal id: they go to
the client as they are.
"""

from __future__ import annotations

import enum
from typing import Any


class Status(str, enum.Enum):
    """A request's failure, named as its gRPC status (the API's own vocabulary)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ServiceError(Exception):
    """A failure the client is told about, with its status. Subclasses fix the status; a
    ``ServiceError`` made directly (a status relayed from another process) names it."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = Status(status)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles exceptions between processes; rebuild from message and status.
        return (_rebuild, (type(self), self.message, self.status))


def _rebuild(cls: type[ServiceError], message: str, status: Status) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message, error.status = message, status
    return error


class InvalidRequestError(ServiceError, ValueError):
    """The request itself is wrong (an empty prompt, a token outside the vocabulary)."""

    status = Status.INVALID_ARGUMENT


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the context (or the KV cache)."""


class QueueFullError(ServiceError, RuntimeError):
    """The waiting queue is at its bound; the caller should retry later."""

    status = Status.RESOURCE_EXHAUSTED


class EngineDeadError(ServiceError, RuntimeError):
    """The model workers failed; the request may be retried on another replica."""

    status = Status.UNAVAILABLE

    def __init__(self, message: str) -> None:
        # The client's next step is always the same: say it.
        super().__init__(message if "retry" in message else f"{message}; retry")


class InternalError(ServiceError):
    """Anything unexpected: the client sees a fixed message, the log has the details."""

    status = Status.INTERNAL
