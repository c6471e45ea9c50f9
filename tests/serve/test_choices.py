"""Several choices per request (n) and continuing the final assistant message, end to end:
real Ray Serve, the official openai client over HTTP, the SDK over gRPC, each checked
against the offline engine on the same checkpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from model.sampling_params import SamplingParams
from serve import LLM
from serve.client import AsyncLLMClient, LLMClient
from tests.serve.conftest import Service, call_each_replica, start_service

PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
SAMPLED = {"temperature": 1.0, "ignore_eos": True}
CONTINUED = [{"role": "user", "content": "Say something."},
             {"role": "assistant", "content": "Here is something:"}]


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[Service]:
    yield from start_service(model=str(tiny_checkpoint), replicas=1, ingress_replicas=1,
                             engine={"num_kv_blocks": 256, "dtype": "float32"})


@pytest.fixture(scope="module")
def offline(tiny_checkpoint: Path) -> Iterator[LLM]:
    with LLM(str(tiny_checkpoint), num_kv_blocks=256, dtype="float32") as llm:
        yield llm


@pytest.fixture
def http(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def single_texts(offline: LLM, n: int, seed: int, max_tokens: int) -> list[str]:
    """What n separate single requests with seeds seed, seed+1, ... make offline."""
    return [offline.generate(PROMPT, SamplingParams(seed=seed + i, max_tokens=max_tokens,
                                                    **SAMPLED))[0].outputs[0].text
            for i in range(n)]


def test_n_completions_equal_seeded_single_requests(http: openai.OpenAI, service: Service,
                                                    offline: LLM) -> None:
    response = http.completions.create(model=service.model, prompt=PROMPT, n=3, seed=11,
                                       max_tokens=12, temperature=1.0,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.text for c in response.choices] == single_texts(offline, 3, 11, 12)
    assert all(c.finish_reason == "length" for c in response.choices)
    prompt_tokens = len(offline.tokenizer.encode(PROMPT))
    assert response.usage.prompt_tokens == prompt_tokens  # counted once
    assert response.usage.completion_tokens == 3 * 12


def test_n_chat_stream_carries_each_choice_index(http: openai.OpenAI, service: Service,
                                                 offline: LLM) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    stream = http.chat.completions.create(model=service.model, messages=messages, n=2,
                                          seed=5, max_tokens=10, temperature=1.0,
                                          stream=True, stream_options={"include_usage": True},
                                          extra_body={"ignore_eos": True})
    texts, finishes, usage = ["", ""], [None, None], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    expected = [offline.chat(messages, SamplingParams(seed=5 + i, max_tokens=10, **SAMPLED))
                [0].outputs[0].text for i in range(2)]
    assert texts == expected
    assert finishes == ["length", "length"]
    assert usage is not None and usage.completion_tokens == 20


def test_n_over_grpc_and_every_block_back_after_a_cancel(service: Service,
                                                         offline: LLM) -> None:
    with LLMClient(service.target, timeout_s=60) as client:
        completion = client.generate(PROMPT, n=3, seed=2, max_tokens=8, **SAMPLED)
    assert [c.text for c in completion.choices] == single_texts(offline, 3, 2, 8)
    assert completion.usage is not None and completion.usage.completion_tokens == 24

    async def cancel_after_some_tokens() -> set[int]:
        seen: set[int] = set()
        async with AsyncLLMClient(service.target, timeout_s=60) as client:
            stream = client.stream_generate(PROMPT, n=4, max_tokens=400, **SAMPLED)
            async for chunk in stream:
                seen.add(chunk.index)
                if len(seen) == 4:
                    break
            await stream.aclose()
        return seen

    assert asyncio.run(asyncio.wait_for(cancel_after_some_tokens(), 60)) == {0, 1, 2, 3}
    deadline = time.monotonic() + 20
    while True:  # the cancellation crosses proxy, Ingress and replica
        stats = list(call_each_replica("mistral", "LLMServer", "stats").values())
        if all(s["num_free_kv_blocks"] == s["num_kv_blocks"] and s["num_running"] == 0
               for s in stats) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(s["num_free_kv_blocks"] == s["num_kv_blocks"] for s in stats), stats


def test_continuing_the_final_assistant_message(http: openai.OpenAI, service: Service,
                                                offline: LLM) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = offline.chat(CONTINUED, greedy, continue_final_message=True)[0].outputs[0].text
    response = http.chat.completions.create(
        model=service.model, messages=CONTINUED, max_tokens=8, temperature=0.0,
        extra_body={"ignore_eos": True, "continue_final_message": True,
                    "add_generation_prompt": False})
    assert response.choices[0].message.content == expected
    with LLMClient(service.target, timeout_s=60) as client:
        reply = client.chat(CONTINUED, continue_final_message=True, max_tokens=8,
                            temperature=0.0, ignore_eos=True)
    assert reply.text == expected


def test_choice_and_continuation_errors_say_what_to_change(http: openai.OpenAI,
                                                           service: Service) -> None:
    with pytest.raises(openai.BadRequestError, match="at most 8 choices"):
        http.completions.create(model=service.model, prompt=PROMPT, n=9, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="set continue_final_message"):
        http.chat.completions.create(model=service.model, messages=CONTINUED, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt: false"):
        http.chat.completions.create(model=service.model, messages=CONTINUED, max_tokens=2,
                                     extra_body={"continue_final_message": True})
