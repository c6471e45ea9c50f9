"""The one error table: every status has each front end's form, and each error class its
status, so the gRPC, HTTP and OpenAI answers to one failure always agree."""

from __future__ import annotations

import pickle

import grpc
import pytest

from serve.errors import (
    ERRORS,
    EngineDeadError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    PromptTooLongError,
    QueueFullError,
    RequestTooLargeError,
    ServiceError,
    Status,
    UnauthenticatedError,
    grpc_code,
)
from serve.openai.protocol import ApiError


def test_every_status_has_a_form_and_a_grpc_code() -> None:
    assert set(ERRORS) == set(Status)
    for status in Status:
        assert grpc_code(status) is getattr(grpc.StatusCode, status.name)


@pytest.mark.parametrize(("error", "status", "http", "openai_type"), [
    (InvalidRequestError("x"), Status.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (PromptTooLongError("x"), Status.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (UnauthenticatedError("x"), Status.UNAUTHENTICATED, 401, "authentication_error"),
    (ModelNotFoundError("x"), Status.NOT_FOUND, 404, "invalid_request_error"),
    (QueueFullError("x"), Status.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (RequestTooLargeError("x"), Status.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (EngineDeadError("x"), Status.UNAVAILABLE, 503, "server_error"),
    (InternalError("x"), Status.INTERNAL, 500, "server_error"),
])
def test_each_error_class_carries_its_status(error: ServiceError, status: Status, http: int,
                                             openai_type: str) -> None:
    assert error.status is status
    api = ApiError.from_service_error(error)
    assert (api.status, api.error_type) == (http, openai_type)
    assert ("Retry-After" in api.headers()) == ERRORS[status].retryable


def test_errors_survive_pickling_between_processes() -> None:
    # Ray ships exceptions between the replica and the ingress by pickle.
    for error in (PromptTooLongError("too long"), ServiceError("relayed", Status.NOT_FOUND)):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.status, copy.message) == (type(error), error.status,
                                                            error.message)


def test_engine_errors_keep_their_builtin_bases() -> None:
    # Callers of the offline API catch ValueError for bad input.
    assert isinstance(PromptTooLongError("x"), ValueError)
    assert isinstance(InvalidRequestError("x"), ValueError)
    assert "retry" in EngineDeadError("the workers failed").message
