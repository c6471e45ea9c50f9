"""The service end to end: real Ray Serve, the Ingress replicas' own gRPC server over a
socket, real redis-server.

Two LLMServer replicas and two ingress replicas share one Redis prefix index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from model.sampling_params import SamplingParams
from serve import LLM
from serve.client import AsyncLLMClient, InvalidArgument, LLMClient, Unauthenticated
from serve.grpc_api import llm_pb2, llm_pb2_grpc
from tests.serve.conftest import RedisServer, call_each_replica, start_service

API_KEY = "test-key"
BLOCK_SIZE = 16
GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path, redis_server: RedisServer) -> Iterator[str]:
    for running in start_service(
            model=str(tiny_checkpoint), replicas=2, ingress_replicas=2,
            redis_url=redis_server.url, api_key=API_KEY,
            engine={"num_kv_blocks": 512, "dtype": "float32"}, index_resync_s=1.0):
        yield running.target


@pytest.fixture
def client(service: str) -> Iterator[LLMClient]:
    with LLMClient(service, api_key=API_KEY, timeout_s=60) as c:
        yield c


def llm_server_stats() -> list[dict]:
    """Each LLMServer replica's engine stats, asked of every replica directly (a call
    through the router may keep reaching the same one)."""
    return list(call_each_replica("mistral", "LLMServer", "stats").values())


def test_streaming_matches_offline_engine(client: LLMClient, tiny_checkpoint: Path) -> None:
    offline = LLM(str(tiny_checkpoint), num_kv_blocks=128, dtype="float32")
    params = SamplingParams(max_tokens=12, **GREEDY)
    prompt = "The quick brown fox"
    expected = offline.generate(prompt, params)[0].outputs[0]
    chunks = list(client.stream_generate(prompt, max_tokens=12, **GREEDY))
    assert [t for c in chunks for t in c.token_ids] == expected.token_ids
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].finish_reason == "length"

    messages = [{"role": "user", "content": "Say something."}]
    expected_chat = offline.chat(messages, params)[0].outputs[0]
    completion = client.chat(messages, max_tokens=12, **GREEDY)
    assert completion.token_ids == expected_chat.token_ids
    assert completion.text == expected_chat.text


def test_streams_move_to_output_channels_with_the_same_output(client: LLMClient,
                                                              tiny_checkpoint: Path) -> None:
    """A replica's first streams from an Ingress come on their own calls; then the Ingress
    holds a channel to it and the chunks come there, token for token the same."""
    offline = LLM(str(tiny_checkpoint), num_kv_blocks=128, dtype="float32")
    prompt = "Channels carry every stream of a replica"
    expected = offline.generate(prompt, SamplingParams(max_tokens=10, **GREEDY))[0].outputs[0]

    def carried() -> int:
        stats = call_each_replica("mistral", "Ingress", "output_channel_stats").values()
        return sum(s["num_chunks"] for s in stats)

    before = carried()
    for _ in range(12):
        chunks = list(client.stream_generate(prompt, max_tokens=10, **GREEDY))
        assert [t for c in chunks for t in c.token_ids] == expected.token_ids
        assert "".join(c.text for c in chunks) == expected.text
    assert carried() > before
    stats = call_each_replica("mistral", "Ingress", "output_channel_stats").values()
    assert any(s["open_replicas"] for s in stats)


def _conversation_turns(
    client: LLMClient, session_id: str | None, turns: int = 5
) -> list[tuple[str, int, int]]:
    """(replica, cached tokens, prompt tokens) per turn, resending the whole history."""
    messages: list[dict[str, str]] = []
    seen = []
    for turn in range(turns):
        messages.append(
            {
                "role": "user",
                "content": f"Turn {turn}: tell me about item {turn} "
                "in some detail, please, with examples and counterexamples.",
            }
        )
        completion = client.chat(messages, max_tokens=24, session_id=session_id, **GREEDY)
        seen.append(
            (completion.replica_id, completion.usage.cached_tokens, completion.usage.prompt_tokens)
        )
        messages.append({"role": "assistant", "content": completion.text})
    return seen


def test_session_stays_on_one_replica_and_reuses_its_cache(client: LLMClient) -> None:
    seen = _conversation_turns(client, session_id="conversation-a")
    assert len({replica for replica, _, _ in seen}) == 1
    for (_, cached, _), (_, _, previous_prompt) in zip(seen[1:], seen, strict=False):
        # Everything of the previous turn that filled whole blocks is served from cache.
        assert cached >= (previous_prompt // BLOCK_SIZE) * BLOCK_SIZE
        assert cached > 0


def test_prefix_routing_finds_the_replica_without_a_session(client: LLMClient) -> None:
    with_session = _conversation_turns(client, session_id="conversation-b", turns=3)
    owner = with_session[0][0]
    # The same conversation again without its session id: the router finds the replica
    # holding its prefix in the index, from whichever ingress replica takes the request.
    for _ in range(4):
        again = _conversation_turns(client, session_id=None, turns=2)
        assert {replica for replica, _, _ in again} == {owner}
        assert again[0][1] > 0


def test_redis_outage_degrades_to_load_routing(client: LLMClient,
                                               redis_server: RedisServer) -> None:
    from serve.engine.block_hash import hash_prompt_blocks
    from serve.prefix_index import RedisPrefixIndex

    messages = [{"role": "user", "content": "Before the outage: a question long enough to "
                 "fill a few blocks of sixteen tokens each, so the index has entries."}]
    before = client.chat(messages, max_tokens=4, **GREEDY)
    hashes = hash_prompt_blocks(client.tokenize(messages), BLOCK_SIZE)
    redis_server.stop()
    try:
        for i in range(4):
            completion = client.generate(f"outage request {i}", max_tokens=4, **GREEDY)
            assert completion.finish_reason == "length"
    finally:
        redis_server.start()  # empty: a restarted Redis without persistence lost every key
    # The replicas republish what they hold; the index refills without any new request.
    index = RedisPrefixIndex(redis_server.url)
    deadline = time.monotonic() + 20
    while not index.match_prefix(hashes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert index.match_prefix(hashes) == {before.replica_id: len(hashes)}
    # And prefix routing uses it again.
    after = client.chat(messages, max_tokens=4, **GREEDY)
    assert after.replica_id == before.replica_id
    assert after.usage.cached_tokens > 0


def _raw_status(service: str, request: llm_pb2.GenerateRequest) -> tuple[grpc.StatusCode, str]:
    """Send a request as any gRPC client could, bypassing the SDK's own checks."""
    with grpc.insecure_channel(service) as channel:
        stub = llm_pb2_grpc.LLMServiceStub(channel)
        try:
            list(stub.Generate(request, metadata=(("authorization", f"Bearer {API_KEY}"),),
                               timeout=60))
        except grpc.RpcError as error:
            return error.code(), error.details()
    raise AssertionError("the request was accepted")


def test_bad_input_gets_a_status_and_a_message(client: LLMClient, service: str) -> None:
    with pytest.raises(InvalidArgument, match="prompt has 600 tokens"):
        client.generate(list(range(5, 605)), max_tokens=4)
    bad = [
        (llm_pb2.GenerateRequest(text="hi", sampling=llm_pb2.SamplingParams(max_tokens=-3)),
         grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (llm_pb2.GenerateRequest(text="hi", sampling=llm_pb2.SamplingParams(temperature=-0.5)),
         grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (llm_pb2.GenerateRequest(text="hi", cache_salt="\x00" * 8),
         grpc.StatusCode.INVALID_ARGUMENT, "cache_salt"),
        (llm_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (llm_pb2.GenerateRequest(text="a" * (10 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ]
    for request, expected_code, expected_words in bad:
        code, message = _raw_status(service, request)
        assert code == expected_code, message
        assert expected_words in message
    with (
        LLMClient(service, timeout_s=30) as anonymous,
        pytest.raises(Unauthenticated, match="API key"),
    ):
        anonymous.generate("hello", max_tokens=2)
    # And the service keeps serving.
    assert client.generate("still there?", max_tokens=3, **GREEDY).finish_reason == "length"


def test_cancelled_streams_return_every_block(service: str) -> None:
    """50 concurrent streams, each cancelled by its client after its third token: a stream
    of 500 tokens cannot end by itself meanwhile, so every one must end as an abort in its
    engine (a lost cancellation would run on to max_tokens) and free its blocks."""
    async def scenario() -> None:
        async with AsyncLLMClient(service, api_key=API_KEY, timeout_s=60) as client:

            async def consume(i: int) -> None:
                stream = client.stream_generate(f"stream {i}", max_tokens=500, ignore_eos=True)
                received = 0
                async for chunk in stream:
                    received += len(chunk.token_ids)
                    if received >= 3:
                        break
                await stream.aclose()  # cancels the call

            await asyncio.wait_for(asyncio.gather(*(consume(i) for i in range(50))), 120)

    aborted_before = sum(s["num_aborted"] for s in llm_server_stats())
    asyncio.run(scenario())
    # On a busy machine the cancellations take a while to cross proxy, Ingress and replica.
    deadline = time.monotonic() + 20.0
    while True:
        stats = llm_server_stats()
        if (
            all(
                s["num_free_kv_blocks"] == s["num_kv_blocks"] and s["num_running"] == 0
                for s in stats
            )
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)
    assert len(stats) == 2
    assert all(s["num_free_kv_blocks"] == s["num_kv_blocks"] for s in stats), stats
    assert sum(s["num_aborted"] for s in stats) - aborted_before == 50


SDK_SCRIPT = """
import sys
from serve.client import LLMClient

with LLMClient(sys.argv[1], api_key=sys.argv[2], timeout_s=60) as client:
    info = client.model_info()
    reply = client.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
loaded = sorted({name.split(".")[0] for name in sys.modules}
                & {"torch", "ray", "model", "cluster", "pydantic", "transformers"})
print(info.block_size, len(reply.token_ids), reply.usage.completion_tokens, loaded)
"""


def test_the_sdk_installs_alone_and_talks_to_the_service(service: str,
                                                           tmp_path: Path) -> None:
    """A plain ``pip install`` (no extras) in a fresh venv: no torch or Ray can be imported
    there, yet the SDK reaches the running service over gRPC."""
    import subprocess

    from tests.serve.sdk_venv import install_sdk

    python = install_sdk(tmp_path)
    for heavy in ("torch", "ray", "transformers"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True,
                               timeout=60)
        assert probe.returncode != 0, f"{heavy} is importable in the SDK-only venv"
    result = subprocess.run([str(python), "-c", SDK_SCRIPT, service, API_KEY],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["16", "4", "4", "[]"]


def test_client_request_ids_may_repeat(client: LLMClient) -> None:
    """Any tenant picks any request id; four streams with the same one are all served."""
    async def scenario() -> list[list[str]]:
        async with AsyncLLMClient(client.target, api_key=API_KEY, timeout_s=60) as aio:
            async def one(i: int) -> list[str]:
                return [chunk.request_id async for chunk in aio.stream_generate(
                    f"same id {i}", max_tokens=6, ignore_eos=True, request_id="same-id")]

            return list(await asyncio.gather(*(one(i) for i in range(4))))

    for ids in asyncio.run(scenario()):
        assert ids and set(ids) == {"same-id"}


def test_malformed_protobuf_is_invalid_argument(service: str) -> None:
    with grpc.insecure_channel(service) as channel:
        call = channel.unary_stream("/mistral.serve.v1.LLMService/Generate",
                                    request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as error:
            list(call(b"\xff\xff\xff\xff", metadata=[("authorization", f"Bearer {API_KEY}")],
                      timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid mistral.serve.v1.GenerateRequest message" in error.value.details()


def test_every_list_a_client_sends_is_bounded(client: LLMClient) -> None:
    with pytest.raises(InvalidArgument, match="10000 stop strings; this service takes at "
                                              "most 16"):
        client.generate("hi", max_tokens=2, stop=[f"s{i}" for i in range(10_000)])
    with pytest.raises(InvalidArgument, match="stop string of 300 characters"):
        client.generate("hi", max_tokens=2, stop=["x" * 300])
    with pytest.raises(InvalidArgument, match="100 stop token ids"):
        client.generate("hi", max_tokens=2, stop_token_ids=list(range(100)))
    with pytest.raises(InvalidArgument, match="2000 messages"):
        client.chat([{"role": "user", "content": "hi"}] * 2000, max_tokens=2)


def test_health_and_reflection_answer_on_the_service_port(service: str) -> None:
    """The Ingress's own gRPC server answers grpc.health.v1 (Kubernetes' gRPC probes) and
    server reflection (grpcurl) beside the LLM service, without an API key."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from serve.ingress.grpc_health import HealthCheckRequest, HealthCheckResponse

    with grpc.insecure_channel(service) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=HealthCheckRequest.SerializeToString,
                                    response_deserializer=HealthCheckResponse.FromString)
        deadline = time.monotonic() + 30
        while check(HealthCheckRequest(), timeout=10).status != 1:  # SERVING
            assert time.monotonic() < deadline, "the Ingress never became ready"
            time.sleep(0.2)
        named = HealthCheckRequest(service="mistral.serve.v1.LLMService")
        assert check(named, timeout=10).status == 1
        with pytest.raises(grpc.RpcError) as error:
            check(HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for answer in answers
                 for s in answer.list_services_response.service}
    assert {"mistral.serve.v1.LLMService", "grpc.health.v1.Health"} <= names


def test_every_ingress_replica_serves_the_shared_ports(service: str) -> None:
    """Two Ingress replicas bound the same ports (SO_REUSEPORT); each one answers."""
    ports = call_each_replica("mistral", "Ingress", "ports")
    assert len(ports) == 2
    assert {p["grpc"] for p in ports.values()} == {int(service.rsplit(":", 1)[1])}
    deadline = time.monotonic() + 30
    while not all(call_each_replica("mistral", "Ingress", "ready").values()):
        assert time.monotonic() < deadline, "an Ingress replica never became ready"
        time.sleep(0.2)
