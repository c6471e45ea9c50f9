"""Between the public protobuf messages and the engine's types, validating on the way in."""

from __future__ import annotations

from typing import Any

from model.sampling_params import SamplingParams
from serve.config import Limits
from serve.errors import invalid
from serve.grpc_api import llm_pb2
from serve.protocol import ServeChunk
from serve.sampling_limits import limited_sampling_params

_OPTIONAL = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
             "presence_penalty", "frequency_penalty", "seed", "logprobs", "min_tokens", "n")
MAX_ID_LENGTH = 256


def sampling_params(message: Any, limits: Limits) -> SamplingParams:
    """Unset fields keep SamplingParams' defaults; bad values raise INVALID_ARGUMENT."""
    values: dict[str, Any] = {name: getattr(message, name) for name in _OPTIONAL
                              if message.HasField(name)}
    values["stop"] = list(message.stop) or None
    values["stop_token_ids"] = list(message.stop_token_ids) or None
    values["ignore_eos"] = message.ignore_eos
    values["include_stop_str_in_output"] = message.include_stop_str_in_output
    values["structured_outputs"] = _structured_outputs(message)
    values["logit_bias"] = dict(message.logit_bias) or None
    values["allowed_token_ids"] = list(message.allowed_token_ids) or None
    values["bad_words"] = list(message.bad_words) or None
    return limited_sampling_params(values, limits, min(256, limits.max_new_tokens),
                                   context="sampling: ")


def _structured_outputs(message: Any) -> dict[str, Any] | None:
    """The format fields as ``StructuredOutputsParams`` fields; more than one is refused in
    the API's own names."""
    given: dict[str, tuple[str, Any]] = {}
    for field, name in (("json_schema", "json"), ("regex", "regex"), ("grammar", "grammar")):
        if message.HasField(field):
            given[name] = (field, getattr(message, field))
    if message.json_object:
        given["json_object"] = ("json_object", True)
    if message.choice:
        given["choice"] = ("choice", list(message.choice))
    if len(given) > 1:
        raise invalid("sampling: set at most one of json_schema, json_object, regex, choice "
                      f"and grammar; got {', '.join(field for field, _ in given.values())}")
    if not given:
        return None
    values = {name: value for name, (_, value) in given.items()}
    if message.HasField("json_schema_strict"):
        values["strict"] = message.json_schema_strict
    return values


def check_identifier(name: str, value: str) -> str | None:
    """Session ids and cache salts are opaque short strings; empty means absent."""
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise invalid(f"{name} must be a printable string of at most {MAX_ID_LENGTH} "
                      f"characters, got {len(value)} characters")
    return value


def chat_messages(messages: Any) -> list[dict[str, str]]:
    if not messages:
        raise invalid("messages is empty; send at least one user message")
    return [{"role": m.role, "content": m.content} for m in messages]


def response(chunk: ServeChunk) -> Any:
    message = llm_pb2.GenerateResponse(
        request_id=chunk.request_id, text=chunk.text, token_ids=chunk.token_ids,
        finish_reason=chunk.finish_reason or "",
        stop_reason="" if chunk.stop_reason is None else str(chunk.stop_reason),
        replica_id=chunk.replica_id, index=chunk.index)
    for token_id, entry in zip(chunk.token_ids, chunk.logprobs, strict=False):
        top = [llm_pb2.TopLogprob(token_id=t, logprob=lp)
               for t, lp in sorted(entry.items(), key=lambda kv: -kv[1])]
        message.logprobs.append(llm_pb2.TokenLogprobs(token_id=token_id,
                                                      logprob=entry.get(token_id, 0.0),
                                                      top=top))
    if chunk.final:
        message.usage.CopyFrom(llm_pb2.Usage(prompt_tokens=chunk.prompt_tokens,
                                             completion_tokens=chunk.completion_tokens,
                                             cached_tokens=chunk.cached_tokens))
    return message
