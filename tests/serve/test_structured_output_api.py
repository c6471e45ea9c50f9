"""Structured output and token masks through the real service: the official openai client
over HTTP, and the SDK over gRPC (sync and asyncio), on the tiny random model, whose output
is noise unless a constraint shapes it."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from model.tokenizer import MistralV1Tokenizer
from serve.client import AsyncLLMClient, InvalidArgument, JsonSchema, LLMClient
from tests.serve.test_openai import API_KEY, Service, service  # noqa: F401 - the fixture

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "age": {"type": "integer", "minimum": 0, "maximum": 130},
                   "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3},
                   "admin": {"type": "boolean"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:  # noqa: F811
    return openai.OpenAI(base_url=service.url + "/v1", api_key=API_KEY, max_retries=0,
                         timeout=120)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Describe a person as JSON."}], **kwargs)


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        response = chat(client, response_format=response_format, max_tokens=300, seed=seed)
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    stream = chat(client, response_format=response_format, max_tokens=300, seed=7,
                  stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_regex_and_choice_extras(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    regex = r"[A-Z][a-z]{2,5}-\d{2}"
    completion = client.completions.create(model=model, prompt="Code:", max_tokens=32, seed=1,
                                           extra_body={"guided_regex": regex})
    assert re.fullmatch(regex, completion.choices[0].text)
    choices = ["red", "green", "light blue"]
    completion = client.completions.create(model=model, prompt="Color:", max_tokens=16,
                                           seed=2, extra_body={"guided_choice": choices})
    assert completion.choices[0].text in choices
    response = chat(client, max_tokens=32, seed=3, extra_body={"guided_json": {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}})
    assert isinstance(json.loads(response.choices[0].message.content)["ok"], bool)


def test_logit_bias_100_makes_every_token_that_token(client: openai.OpenAI) -> None:
    tokenizer = MistralV1Tokenizer.from_file(None)  # the tiny checkpoint's tokenizer
    [token_id] = tokenizer.encode("world", add_bos=False)
    text = tokenizer.decode([token_id], skip_special_tokens=False)  # as the server shows it
    response = chat(client, logit_bias={str(token_id): 100}, max_tokens=10, seed=4,
                    temperature=1.0, logprobs=True)
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 10
    assert [entry.token for entry in choice.logprobs.content] == [text] * 10
    # allowed_token_ids and bad_words ride along as extras.
    allowed = [tokenizer.sp.piece_to_id(p) for p in ("▁yes", "▁no")]
    response = chat(client, max_tokens=8, seed=5, logprobs=True,
                    extra_body={"allowed_token_ids": allowed, "bad_words": ["no"]})
    assert [entry.token for entry in response.choices[0].logprobs.content] == ["yes"] * 8


@pytest.mark.parametrize("kwargs, words", [
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     ["JSON schema does not compile", "objekt"]),
    ({"extra_body": {"guided_regex": "([a-z]"}}, ["regex does not compile"]),
    ({"response_format": {"type": "xml"}}, ["response_format.type", "json_schema"]),
    ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a"}},
     ["send only one"]),
    ({"logit_bias": {"5": 300}}, ["[-100, 100]"]),
    ({"logit_bias": {"99999": 1}}, ["outside the vocabulary"]),
    ({"extra_body": {"guided_choice": ["a"], "ignore_eos": True}}, ["drop ignore_eos"]),
])
@pytest.mark.parametrize("stream", [False, True])
def test_errors_are_bad_requests_that_say_what_to_change(
        client: openai.OpenAI, kwargs: dict[str, Any], words: list[str], stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=8, stream=stream, **kwargs)
    assert caught.value.status_code == 400
    for word in words:
        assert word in caught.value.message


def test_sdk_structured_requests_sync_and_asyncio(service: Service) -> None:  # noqa: F811
    tokenizer = MistralV1Tokenizer.from_file(None)
    with LLMClient(service.target, api_key=API_KEY, timeout_s=120) as sdk:
        result = sdk.generate("Person:", json_schema=SCHEMA, max_tokens=300, seed=11)
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), SCHEMA)
        loose = sdk.chat([{"role": "user", "content": "Hi"}], max_tokens=300, seed=12,
                         json_schema=JsonSchema(json.dumps(SCHEMA), strict=False))
        jsonschema.validate(json.loads(loose.text), SCHEMA)
        with pytest.raises(InvalidArgument, match="regex does not compile"):
            sdk.generate("x", regex="(", max_tokens=4)
        with pytest.raises(ValueError, match="pass only one"):
            sdk.generate("x", regex="a", choice=["b"])

    async def run(open_id: int, close_id: int) -> list[str]:
        async with AsyncLLMClient(service.target, api_key=API_KEY, timeout_s=120) as aio:
            results = await asyncio.gather(
                aio.generate("Pick:", choice=["left", "right"], max_tokens=8, seed=13),
                aio.generate("Code:", regex=r"\d{4}", max_tokens=8, seed=14),
                aio.generate("Same:", logit_bias={1000: 100}, max_tokens=5, seed=15),
                aio.generate("Obj:", response_format={"type": "json_object"},
                             allowed_token_ids=[open_id, close_id, 2], max_tokens=8))
            assert results[2].token_ids == [1000] * 5
            return [r.text for r in results[:2]] + [results[3].text]

    pick, code, obj = asyncio.run(run(tokenizer.sp.piece_to_id("{"),
                                      tokenizer.sp.piece_to_id("}")))
    assert pick in ("left", "right")
    assert re.fullmatch(r"\d{4}", code)
    assert obj == "{}"
