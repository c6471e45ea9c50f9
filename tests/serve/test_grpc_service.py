"""The LLMService registration on a real grpc.aio server, wrapped the way Serve's proxy
wraps it (Ray's own ``gRPCGenericServer`` swaps the behaviours in), with a client over a
socket. The scenarios run in a child process: the failure they guard against is a
segfault, which must fail the test rather than kill the test runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray.serve")

SERVER_AND_CLIENT = textwrap.dedent('''
    import asyncio, sys
    import grpc
    from ray.serve._private.grpc_util import gRPCGenericServer
    from serve.grpc_api import llm_pb2, llm_pb2_grpc
    from serve.ingress.grpc_service import add_llm_service_to_server

    seen = {}

    def factory(service_method, streaming_type):
        async def stream(request, context):
            # What Serve's proxy does: stream until cancelled, then write its access log
            # (which reads the peer) and set the final status.
            try:
                for i in range(1000):
                    await asyncio.sleep(0.01)
                    yield llm_pb2.GenerateResponse(text=str(i)).SerializeToString()
            finally:
                await asyncio.sleep(0.3)  # the RPC is long over by now
                seen["peer"] = context.peer()
                context.set_code(grpc.StatusCode.CANCELLED)
                context.set_details("cancelled")

        async def unary(request, context):
            seen["unary_peer"] = context.peer()
            return llm_pb2.TokenizeResponse().SerializeToString()

        return stream if streaming_type.value.endswith("stream") else unary

    async def main():
        server = gRPCGenericServer(factory)
        add_llm_service_to_server(llm_pb2_grpc.LLMServiceServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = llm_pb2_grpc.LLMServiceStub(channel)
            await stub.Tokenize(llm_pb2.TokenizeRequest(), timeout=10)
            for _ in range(20):  # cancels land at different points of a send
                call = stub.Generate(llm_pb2.GenerateRequest(), timeout=10)
                await call.read()
                call.cancel()
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        await server.stop(grace=None)
        assert seen["peer"].startswith("ipv4:127.0.0.1"), seen
        assert seen["unary_peer"].startswith("ipv4:127.0.0.1"), seen
        print("ok")

    asyncio.run(main())
''')


def test_behaviours_may_read_the_peer_after_a_cancelled_stream_ended() -> None:
    result = subprocess.run([sys.executable, "-c", SERVER_AND_CLIENT], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.returncode, result.stdout[-2000:], result.stderr[-4000:])
