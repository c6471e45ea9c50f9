"""The client SDK alone: request building, then retries, errors and cancellation against a
real gRPC server on a localhost socket (a scripted ``LLMServiceServicer``, no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from serve import client as sdk
from serve.client.requests import call_metadata, chat_request, generate_request, tokenize_request
from serve.grpc_api import llm_pb2, llm_pb2_grpc

CODE = grpc.StatusCode


class ScriptedLLM(llm_pb2_grpc.LLMServiceServicer):
    """Fails the first ``unavailable_first`` calls, then streams ``chunks``, ``delay_s`` apart;
    ``abort_with`` fails every call up front, ``abort_after=(n, code)`` after n chunks."""

    def __init__(self) -> None:
        self.chunks = ["Hel", "lo"]
        self.delay_s = 0.0
        self.unavailable_first = 0
        self.abort_with: tuple[grpc.StatusCode, str] | None = None
        self.abort_after: tuple[int, grpc.StatusCode] | None = None
        self.calls = 0
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.cancelled = threading.Event()  # set when a stream saw its client go away
        self.target = ""  # host:port, once serving

    def _start(self, request: Any, context: grpc.ServicerContext) -> None:
        self.calls += 1
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= self.unavailable_first:
            context.abort(CODE.UNAVAILABLE, "warming up")
        if self.abort_with is not None:
            context.abort(*self.abort_with)

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._start(request, context)
        completed = False

        def on_termination() -> None:
            # A cancel that lands while grpc sends a message ends the call without ever
            # resuming this generator, so the loop below cannot be the only witness.
            if not completed:
                self.cancelled.set()

        context.add_callback(on_termination)
        for index, text in enumerate(self.chunks):
            if self.abort_after is not None and index == self.abort_after[0]:
                context.abort(self.abort_after[1], "replica died")
            deadline = time.monotonic() + self.delay_s
            while time.monotonic() < deadline and context.is_active():
                time.sleep(0.005)
            if not context.is_active():
                self.cancelled.set()
                return
            last = index == len(self.chunks) - 1
            usage = llm_pb2.Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=1)
            yield llm_pb2.GenerateResponse(
                request_id=request.request_id or "req-1", text=text, token_ids=[index],
                finish_reason="stop" if last else "", usage=usage if last else None,
                replica_id="replica-0",
            )  # fmt: skip
        completed = True

    Chat = Generate

    def Tokenize(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._start(request, context)
        return llm_pb2.TokenizeResponse(token_ids=[1, len(request.text)])

    def ModelInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._start(request, context)
        return llm_pb2.ModelInfoResponse(model="scripted", max_model_len=64, block_size=16)


@pytest.fixture
def server() -> Iterator[ScriptedLLM]:
    servicer = ScriptedLLM()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, grpc_server)
    servicer.target = f"127.0.0.1:{grpc_server.add_insecure_port('127.0.0.1:0')}"
    grpc_server.start()
    yield servicer
    grpc_server.stop(grace=None)


@pytest.fixture
def client(server: ScriptedLLM) -> Iterator[sdk.LLMClient]:
    with sdk.LLMClient(server.target, api_key="k", timeout_s=10, retry_backoff_s=0.01) as c:
        yield c


def test_only_given_fields_are_set() -> None:
    request = generate_request("Hi", {})
    assert request.WhichOneof("prompt") == "text" and not request.HasField("sampling")
    request = generate_request("Hi", {"temperature": 0.0, "seed": 0, "session_id": "s"})
    sampling = request.sampling
    assert sampling.HasField("temperature") and sampling.HasField("seed")  # zeros are sent
    assert not sampling.HasField("max_tokens") and not sampling.HasField("top_p")
    assert request.session_id == "s" and request.request_id == ""  # unset strings stay empty


def test_token_id_prompt_and_stop_string() -> None:
    request = generate_request([1, 22, 333], {"stop": "\n", "stop_token_ids": [2]})
    assert request.WhichOneof("prompt") == "token_ids" and request.token_ids.ids == [1, 22, 333]
    assert request.sampling.stop == ["\n"] and request.sampling.stop_token_ids == [2]


MISTAKES = [
    ("x", {"temprature": 0.5}, "did you mean 'temperature'"), ("x", {"max_tokens": 0}, "max_"),
    ("x", {"max_tokens": "5"}, "max_tokens"), ("x", {"temperature": float("nan")}, "temper"),
    ("x", {"logprobs": 21}, "logprobs"), ("x", {"stop": 5}, "stop"),
    ("x", {"session_id": 7}, "session_id"), ([1, -2], {}, "token ids"),
    ([1, True], {}, "token ids"), (b"bytes", {}, "prompt"),
]  # fmt: skip


@pytest.mark.parametrize("prompt, options, match", MISTAKES)
def test_obvious_mistakes_raise_value_error(prompt: Any, options: dict[str, Any], match: str) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=match):
        generate_request(prompt, options)


def test_bad_chat_messages_raise_value_error() -> None:
    for messages in ([], [{"role": "user"}], [{"role": "bot", "content": "x"}], "hello"):
        with pytest.raises(ValueError, match="messages"):
            chat_request(messages, {})  # type: ignore[arg-type]


def test_tokenize_request_and_metadata() -> None:
    assert tokenize_request("abc", add_bos=True).text == "abc"
    chat = tokenize_request([{"role": "user", "content": "hi"}], add_bos=False)
    assert chat.WhichOneof("input") == "chat" and chat.chat.messages[0].content == "hi"
    assert call_metadata("k", "app") == (("authorization", "Bearer k"), ("application", "app"))
    assert call_metadata(None, None) == ()


def test_client_rejects_mistakes_before_any_call() -> None:
    with sdk.LLMClient("127.0.0.1:1") as offline:
        with pytest.raises(ValueError, match="did you mean 'max_tokens'"):
            offline.stream_generate("x", max_token=3)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="timeout_s"):
            offline.generate("x", timeout_s=0)


def test_generate_collects_the_stream_and_sends_metadata(server: ScriptedLLM) -> None:
    with sdk.LLMClient(server.target, api_key="k", application="llm") as client:
        completion = client.generate("Hi", max_tokens=2, request_id="r-7")
    assert completion.text == "Hello" and completion.token_ids == [0, 1]
    assert completion.finish_reason == "stop"
    assert completion.usage == sdk.Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=1)
    assert (completion.replica_id, completion.request_id) == ("replica-0", "r-7")
    assert server.metadata[0]["authorization"] == "Bearer k"
    assert server.metadata[0]["application"] == "llm"
    assert server.requests[0].sampling.max_tokens == 2


def test_unavailable_is_retried_until_it_succeeds(
    client: sdk.LLMClient, server: ScriptedLLM
) -> None:
    server.unavailable_first = 2
    assert client.generate("Hi").text == "Hello"
    assert server.calls == 3
    server.calls, server.unavailable_first = 0, 2
    assert client.tokenize("ab") == [1, 2] and server.calls == 3
    info = client.model_info()
    assert (info.model, info.max_model_len, info.block_size) == ("scripted", 64, 16)


def test_retries_run_out(server: ScriptedLLM) -> None:
    server.unavailable_first = 100
    client = sdk.LLMClient(server.target, max_retries=2, retry_backoff_s=0.01)
    with client, pytest.raises(sdk.Unavailable, match="warming up") as caught:
        client.generate("Hi")
    assert caught.value.code == CODE.UNAVAILABLE and server.calls == 3


def test_a_stream_that_yielded_is_not_retried(client: sdk.LLMClient, server: ScriptedLLM) -> None:
    server.abort_after = (1, CODE.UNAVAILABLE)
    stream = client.stream_generate("Hi")
    assert next(stream).text == "Hel"
    with pytest.raises(sdk.Unavailable, match="replica died"):
        next(stream)
    with pytest.raises(sdk.Unavailable):
        client.generate("Hi")
    assert server.calls == 2  # one per stream: no duplicated output


ERRORS = [
    (CODE.INVALID_ARGUMENT, sdk.InvalidArgument), (CODE.RESOURCE_EXHAUSTED, sdk.ResourceExhausted),
    (CODE.UNAUTHENTICATED, sdk.Unauthenticated), (CODE.PERMISSION_DENIED, sdk.PermissionDenied),
    (CODE.DEADLINE_EXCEEDED, sdk.DeadlineExceeded), (CODE.CANCELLED, sdk.Cancelled),
    (CODE.NOT_FOUND, sdk.NotFound), (CODE.INTERNAL, sdk.InternalError),
    (CODE.ABORTED, sdk.ClientError),  # no subclass of its own
]  # fmt: skip


@pytest.mark.parametrize("code, error", ERRORS)
def test_status_maps_to_its_exception(
    client: sdk.LLMClient, server: ScriptedLLM, code: grpc.StatusCode, error: type
) -> None:
    server.abort_with = (code, f"server says {code.name}")
    with pytest.raises(error) as caught:
        client.generate("Hi")
    assert caught.value.code == code and caught.value.details == f"server says {code.name}"
    with pytest.raises(error, match=f"^{code.name}: server says {code.name}$"):
        client.tokenize("Hi")
    assert server.calls == 2  # never retried


def test_deadline(client: sdk.LLMClient, server: ScriptedLLM) -> None:
    server.delay_s = 5.0
    started = time.monotonic()
    with pytest.raises(sdk.DeadlineExceeded):
        client.generate("Hi", timeout_s=0.3)
    assert time.monotonic() - started < 3 and server.calls == 1


def test_break_and_close_cancel_the_server_call(client: sdk.LLMClient, server: ScriptedLLM) -> None:
    server.chunks, server.delay_s = ["x"] * 200, 0.02
    for _chunk in client.stream_generate("Hi"):
        break  # the abandoned generator is collected, which cancels the call
    assert server.cancelled.wait(10)
    server.cancelled.clear()
    stream = client.stream_generate("Hi")
    next(stream)
    stream.close()
    assert server.cancelled.wait(10)


def test_conversation_keeps_history_and_session(client: sdk.LLMClient, server: ScriptedLLM) -> None:
    chat = client.conversation(system="Be brief.", temperature=0.0)
    assert chat.send("Hi").text == "Hello"
    chat.send("Again", max_tokens=4)
    first, second = server.requests
    assert first.session_id == second.session_id == chat.session_id != ""
    assert [(m.role, m.content) for m in second.messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Again"),
    ]  # fmt: skip
    assert second.sampling.HasField("temperature") and second.sampling.max_tokens == 4
    server.abort_with = (CODE.RESOURCE_EXHAUSTED, "too long")
    with pytest.raises(sdk.ResourceExhausted):
        chat.send("More")
    assert len(chat.messages) == 5  # a failed turn is not kept
    server.abort_with = None
    assert "".join(chunk.text for chunk in chat.stream("More")) == "Hello"
    assert chat.messages[-2:] == [
        {"role": "user", "content": "More"}, {"role": "assistant", "content": "Hello"},
    ]  # fmt: skip


def test_async_client(server: ScriptedLLM) -> None:
    async def scenario() -> None:
        async with sdk.AsyncLLMClient(server.target, api_key="k", retry_backoff_s=0.01) as client:
            server.unavailable_first = 1
            completion = await client.generate("Hi")
            assert (completion.text, server.calls) == ("Hello", 2)
            assert await client.tokenize("abc") == [1, 3]
            chat = client.conversation(session_id="s-1")
            assert (await chat.send("Hi")).text == "Hello" and len(chat.messages) == 2
            assert server.requests[-1].session_id == "s-1"
            assert server.metadata[-1]["authorization"] == "Bearer k"
            server.abort_with = (CODE.INVALID_ARGUMENT, "prompt too long")
            with pytest.raises(sdk.InvalidArgument, match="prompt too long"):
                await client.generate("Hi")

    asyncio.run(scenario())


def test_async_aclose_break_and_task_cancel_cancel_the_server_call(server: ScriptedLLM) -> None:
    server.chunks, server.delay_s = ["x"] * 200, 0.02

    async def scenario() -> None:
        async with sdk.AsyncLLMClient(server.target) as client:
            stream = client.stream_generate("Hi")
            await stream.__anext__()
            await stream.aclose()
            assert await asyncio.to_thread(server.cancelled.wait, 10)
            server.cancelled.clear()
            async for _chunk in client.stream_generate("Hi"):
                break  # the loop finalizes the abandoned generator
            assert await asyncio.to_thread(server.cancelled.wait, 10)
            server.cancelled.clear()
            task = asyncio.create_task(client.generate("Hi"))
            while server.calls < 3:  # cancel only once the call reached the server
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(server.cancelled.wait, 10)

    asyncio.run(scenario())
