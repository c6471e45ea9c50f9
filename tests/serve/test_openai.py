"""The OpenAI-compatible HTTP API end to end: real Ray Serve, the Ingress's own HTTP server
over a socket.

One LLMServer replica and one Ingress replica; the same application also answers gRPC.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from model.sampling_params import SamplingParams
from serve import LLM
from serve.client import LLMClient
from serve.errors import (
    EngineDeadError,
    InternalError,
    InvalidRequestError,
    QueueFullError,
    ServiceError,
    UnauthenticatedError,
)
from serve.openai.protocol import ApiError
from tests.serve.conftest import Service, start_service

API_KEY = "openai-test-key"
GREEDY = {"temperature": 0.0, "ignore_eos": True}
MAX_MODEL_LEN = 512  # the tiny checkpoint's context


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[Service]:
    yield from start_service(model=str(tiny_checkpoint), replicas=1, ingress_replicas=1,
                             api_key=API_KEY, engine={"num_kv_blocks": 256, "dtype": "float32"})


@pytest.fixture(scope="module")
def offline(tiny_checkpoint: Path) -> Iterator[LLM]:
    llm = LLM(str(tiny_checkpoint), num_kv_blocks=128, dtype="float32")
    yield llm
    llm.shutdown()


def sse_events(response: requests.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE response, JSON-decoded except ``[DONE]``."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line:
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(response: requests.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    for word in words:
        assert word in error["message"], error
    return error


def test_chat_matches_offline_engine(service: Service, offline: LLM) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say something."}]
    expected = offline.chat(messages, SamplingParams(max_tokens=12, **GREEDY))[0]
    response = service.post("/v1/chat/completions", {
        "model": service.model, "messages": messages, "max_completion_tokens": 12,
        "logprobs": True, "top_logprobs": 2, "user": "someone", **GREEDY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == service.model
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected.outputs[0].text}
    assert choice["finish_reason"] == "length"
    tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
    assert tokens == [offline.tokenizer.decode([t], skip_special_tokens=False)
                      for t in expected.outputs[0].token_ids]
    for entry in choice["logprobs"]["content"]:
        top = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(top) == 2 and top == sorted(top, reverse=True) and entry["logprob"] <= 0
    assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == len(expected.prompt_token_ids) + 12
    assert "cached_tokens" in body["usage"]["prompt_tokens_details"]


def test_chat_stream_concatenates_to_the_same_text(service: Service, offline: LLM) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}]
    expected = offline.chat([{"role": "user", "content": "Tell me a story."}],
                            SamplingParams(max_tokens=10, **GREEDY))[0].outputs[0]
    events = sse_events(service.post("/v1/chat/completions", {
        "messages": messages, "max_tokens": 10, "stream": True,
        "stream_options": {"include_usage": True}, **GREEDY}, stream=True))
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected.text
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:]] == [None, "length"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10


def test_completions_match_offline_engine(service: Service, offline: LLM) -> None:
    params = SamplingParams(max_tokens=8, **GREEDY)
    prompt = "The quick brown fox"
    expected = offline.generate(prompt, params)[0]
    body = service.post("/v1/completions", {"model": service.model, "prompt": prompt,
                                            "max_tokens": 8, **GREEDY}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == expected.outputs[0].text
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)

    ids = [1, 415, 2936, 9060, 285, 1142]
    expected_ids = offline.generate(ids, params)[0].outputs[0]
    events = sse_events(service.post("/v1/completions", {
        "prompt": ids, "max_tokens": 8, "stream": True, "logprobs": 1, **GREEDY}, stream=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_ids.text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    tokens = [t for c in chunks if c["choices"][0]["logprobs"]
              for t in c["choices"][0]["logprobs"]["tokens"]]
    assert len(tokens) == 8


def test_models_health_and_grpc_in_the_same_app(service: Service) -> None:
    models = service.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [service.model]
    assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN
    assert service.get("/health").json() == {"status": "ok"}
    assert_error(service.get("/v1/models/other-model"), 404, "other-model")
    assert_error(service.get("/v1/no-such-route"), 404)
    # Serve's gRPC proxy reaches the same Ingress deployment.
    with LLMClient(service.target, api_key=API_KEY, timeout_s=60) as client:
        assert client.generate("hello", max_tokens=3, **GREEDY).finish_reason == "length"


def test_session_reuses_the_cache(service: Service) -> None:
    messages = [{"role": "user", "content": "A question long enough to fill a few blocks of "
                 "sixteen tokens each, so that the second turn finds them in the cache."}]
    body = {"messages": messages, "max_tokens": 2, "session_id": "conv-1",
            "cache_salt": "tenant-a", **GREEDY}
    first = service.post("/v1/chat/completions", body).json()
    second = service.post("/v1/chat/completions", body).json()
    assert first["usage"]["prompt_tokens"] >= 32
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
    other_tenant = service.post("/v1/chat/completions", {**body, "cache_salt": "b"}).json()
    assert other_tenant["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_errors_are_openai_shaped(service: Service) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    error = assert_error(service.post("/v1/chat/completions", chat, key=None), 401, "API key")
    assert error["type"] == "authentication_error"
    assert_error(service.post("/v1/chat/completions", chat, key="wrong"), 401)
    assert_error(service.get("/v1/models", key=None), 401)
    assert_error(service.post("/v1/chat/completions", {**chat, "temperature": -0.5}), 400,
                 "temperature", "-0.5")
    assert_error(service.post("/v1/chat/completions", {**chat, "n": 9}), 400, "n is 9")
    assert_error(service.post("/v1/completions", {"prompt": "hi", "echo": True}), 400, "echo")
    assert_error(service.post("/v1/completions", {"prompt": "hi", "max_tokens": "many"}), 400,
                 "max_tokens")
    assert_error(service.post("/v1/chat/completions", {**chat, "model": "gpt-4"}), 404,
                 "gpt-4")
    assert_error(service.post("/v1/chat/completions", {"messages": []}), 400, "messages")
    assert_error(service.post("/v1/chat/completions", {
        "messages": [{"role": "assistant", "content": "hi"}]}), 400, "user")
    response = requests.post(service.url + "/v1/completions", data=b"{not json",
                             headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert_error(response, 400, "JSON")
    # Over-length prompts name both numbers, as ids and as text, streaming or not.
    long_ids = list(range(5, 605))
    for body in ({"prompt": long_ids}, {"prompt": long_ids, "stream": True},
                 {"prompt": "word " * 600}):
        assert_error(service.post("/v1/completions", body), 400, "tokens",
                     f"limit is {MAX_MODEL_LEN - 1}")
    assert_error(service.post("/v1/completions", {"prompt": long_ids}), 400, "600 tokens")
    # Errors the engine finds arrive in-band, before any output: still a 400 when streaming.
    for stream in (False, True):
        assert_error(service.post("/v1/completions", {"prompt": [1, 40000], "stream": stream}),
                     400, "40000", "vocabulary")
    big = {"prompt": "a" * (5 << 20)}
    assert_error(service.post("/v1/completions", big), 413, "bytes")
    # And the service keeps serving.
    assert service.post("/v1/chat/completions", chat).status_code == 200


def llm_server_stats() -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle("LLMServer", "mistral")
    return handle.stats.remote().result(timeout_s=10)


def wait_idle(timeout_s: float) -> dict[str, Any]:
    """The LLMServer's stats once nothing runs and every KV block is free (or at timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = llm_server_stats()
        if (stats["num_running"] == 0 and stats["num_waiting"] == 0
                and stats["num_free_kv_blocks"] == stats["num_kv_blocks"]) \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_client_disconnect_aborts_the_request(service: Service) -> None:
    """A dropped stream frees its KV blocks, and leaves in the prefix cache only the blocks
    it filled before the abort: a request that ran to the end would have filled them all."""
    before = wait_idle(30)
    max_tokens = MAX_MODEL_LEN - 16
    body = json.dumps({"prompt": "Never ending story", "max_tokens": max_tokens,
                       "stream": True, **GREEDY}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", service.config.http_port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < 3:  # a few tokens in
            part = sock.recv(65536)
            assert part, received
            received += part
        assert b" 200 " in received.split(b"\r\n", 1)[0], received
    after = wait_idle(60)
    assert after["num_running"] == 0, after
    assert after["num_free_kv_blocks"] == after["num_kv_blocks"], after
    # The prompt (4 tokens with BOS) plus max_tokens fill MAX_MODEL_LEN // 16 - 1 blocks.
    assert after["num_cached_blocks"] - before["num_cached_blocks"] < MAX_MODEL_LEN // 16 - 1


@pytest.mark.parametrize(("error_class", "status"), [
    (InvalidRequestError, 400), (UnauthenticatedError, 401), (QueueFullError, 429),
    (EngineDeadError, 503), (InternalError, 500),
])
def test_status_of_each_pipeline_error(error_class: type[ServiceError], status: int) -> None:
    error = ApiError.from_service_error(error_class("what to change; retry"))
    assert error.status == status
    assert error.body()["error"]["message"] == "what to change; retry"
    assert ("Retry-After" in error.headers()) == (status in (429, 503))
