"""The standard gRPC health service (``grpc.health.v1.Health``: Check and Watch), so that
Kubernetes' gRPC probes, ``grpc_health_probe`` and load balancers can ask an Ingress
replica whether it can serve.

Its two messages are built here from their descriptor and added to protobuf's default pool
(where reflection finds them too) rather than taken from the grpcio-health-checking
package: they are two fields, and the server then needs nothing the SDK does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "grpc.health.v1.Health"
_FILE = "grpc/health/v1/health.proto"
# How often Watch looks at the status for a change.
WATCH_PERIOD_S = 1.0

SERVING = 1
NOT_SERVING = 2


def _message_classes() -> tuple[type[Any], type[Any]]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:  # not loaded yet (grpcio-health-checking would have added it)
        proto = descriptor_pb2.FileDescriptorProto(name=_FILE, package="grpc.health.v1",
                                                   syntax="proto3")
        field = descriptor_pb2.FieldDescriptorProto
        request = proto.message_type.add(name="HealthCheckRequest")
        request.field.add(name="service", number=1, type=field.TYPE_STRING,
                          label=field.LABEL_OPTIONAL)
        response = proto.message_type.add(name="HealthCheckResponse")
        status = response.enum_type.add(name="ServingStatus")
        for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING",
                                       "SERVICE_UNKNOWN")):
            status.value.add(name=name, number=number)
        response.field.add(name="status", number=1, type=field.TYPE_ENUM,
                           label=field.LABEL_OPTIONAL,
                           type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
        service = proto.service.add(name="Health")
        for name, streaming in (("Check", False), ("Watch", True)):
            service.method.add(name=name, input_type=".grpc.health.v1.HealthCheckRequest",
                               output_type=".grpc.health.v1.HealthCheckResponse",
                               server_streaming=streaming)
        pool.Add(proto)
    return (message_factory.GetMessageClass(
                pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            message_factory.GetMessageClass(
                pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))


HealthCheckRequest, HealthCheckResponse = _message_classes()


def add_health_service(server: Any, services: set[str], serving: Callable[[], bool]) -> None:
    """Answer for ``""`` (the whole server) and each name in ``services``: SERVING while
    ``serving()`` is true; other names are NOT_FOUND, as the protocol says."""

    def status(request: Any) -> int | None:
        if request.service and request.service not in services:
            return None
        return SERVING if serving() else NOT_SERVING

    async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
        value = status(request)
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service!r}")
        return HealthCheckResponse(status=value)

    async def watch(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        last = None
        while True:
            value = status(request)
            if value is None:
                value = 3  # SERVICE_UNKNOWN: Watch reports it instead of failing
            if value != last:
                last = value
                yield HealthCheckResponse(status=value)
            await asyncio.sleep(WATCH_PERIOD_S)

    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
