"""Structured output and token masks on the OpenAI API, as ``SamplingParams`` fields.

``response_format`` takes OpenAI's three forms::

    {"type": "text"}
    {"type": "json_object"}
    {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}, "strict": true}}

and vLLM's request extensions are read as well: ``guided_json`` (a schema, as an object or as
JSON text), ``guided_regex``, ``guided_choice`` (a list of strings), ``guided_grammar`` (EBNF),
``allowed_token_ids`` and ``bad_words``; ``logit_bias`` is OpenAI's own (token ids as strings).
At most one format may be given. ``strict`` left out means strict: properties the schema does
not name are refused; ``"strict": false`` follows JSON Schema's own rules.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from serve.errors import InvalidRequestError


class FieldError(InvalidRequestError):
    """A bad value of one body field; ``param`` names it in the OpenAI error."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class StructuredFields(BaseModel):
    """The body fields that restrict the output, shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    response_format: dict[str, Any] | None = None
    guided_json: Any = None  # extension (vLLM)
    guided_regex: str | None = None  # extension (vLLM)
    guided_choice: list[str] | None = None  # extension (vLLM)
    guided_grammar: str | None = None  # extension (vLLM)
    allowed_token_ids: list[int] | None = None  # extension (vLLM)
    bad_words: list[str] | None = None  # extension (vLLM)

    def mask_values(self) -> dict[str, Any]:
        """``structured_outputs``, ``allowed_token_ids`` and ``bad_words`` for SamplingParams."""
        return {"structured_outputs": self.structured_outputs(),
                "allowed_token_ids": self.allowed_token_ids, "bad_words": self.bad_words}

    def structured_outputs(self) -> dict[str, Any] | None:
        given: list[tuple[str, dict[str, Any]]] = []
        if self.response_format is not None:
            parsed = response_format(self.response_format)
            if parsed is not None:
                given.append(("response_format", parsed))
        extras = (("guided_json", "json", self.guided_json),
                  ("guided_regex", "regex", self.guided_regex),
                  ("guided_choice", "choice", self.guided_choice),
                  ("guided_grammar", "grammar", self.guided_grammar))
        given.extend((param, {name: value}) for param, name, value in extras
                     if value is not None)
        if len(given) > 1:
            names = ", ".join(param for param, _ in given)
            raise FieldError(f"{names} each set the output's format: send only one",
                             given[1][0])
        return given[0][1] if given else None


def response_format(value: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as StructuredOutputsParams fields; None for text."""
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind != "json_schema":
        raise FieldError(f"response_format.type is {kind!r}; send \"text\", \"json_object\" "
                         "or \"json_schema\"", "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise FieldError("response_format.json_schema is missing: send {\"name\": ..., "
                         "\"schema\": {...}}", "response_format")
    schema = spec.get("schema")
    if schema is None:
        raise FieldError("response_format.json_schema.schema is missing: send the JSON Schema "
                         "the output must follow", "response_format")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise FieldError(f"response_format.json_schema.strict must be true or false, got "
                         f"{strict!r}", "response_format")
    return {"json": schema, "strict": True if strict is None else strict}
