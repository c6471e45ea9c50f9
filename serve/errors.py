"""Errors the front end turns into gRPC statuses with a message that says what to change."""

from __future__ import annotations

import grpc

from serve import protocol


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[grpc.StatusCode, str]]:
        # Ray pickles exceptions between processes; rebuild from both fields.
        return (ServiceError, (self.code, self.message))


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


CODES = {
    protocol.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    protocol.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    protocol.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    protocol.INTERNAL: grpc.StatusCode.INTERNAL,
}
