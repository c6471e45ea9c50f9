"""The SDK's structured-output keywords, typed, and how they become ``SamplingParams`` fields.

Any one of them sets the output's format::

    client.generate(prompt, json_schema={"type": "object", ...})        # or JSON text
    client.generate(prompt, json_schema=JsonSchema(schema, strict=False))
    client.generate(prompt, json_schema=MyPydanticModel)                # its model_json_schema()
    client.generate(prompt, response_format={"type": "json_schema",     # OpenAI's shape
                                             "json_schema": {"name": "x", "schema": schema}})
    client.generate(prompt, json_object=True)
    client.generate(prompt, regex=r"\\d{3}-\\d{4}")
    client.generate(prompt, choice=["yes", "no"])
    client.generate(prompt, grammar='root ::= "a" | "b"')

Standard library only, like the rest of the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

# Keywords that each set the output's format; at most one per call.
FORMAT_KEYWORDS = ("json_schema", "json_object", "regex", "choice", "grammar", "response_format")


@dataclass(frozen=True)
class JsonSchema:
    """A JSON Schema with its strictness. ``strict`` True (the default): object properties and
    array items the schema does not name are refused; False: JSON Schema's own rules."""

    schema: Mapping[str, Any] | str
    strict: bool = True


class JsonSchemaFormat(TypedDict, total=False):
    """OpenAI's ``response_format.json_schema``; ``name`` and ``description`` are not used."""

    name: str
    description: str
    schema: Mapping[str, Any]
    strict: bool


class ResponseFormat(TypedDict, total=False):
    """OpenAI's ``response_format``: ``{"type": "text" | "json_object" | "json_schema", ...}``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat


def format_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the format keywords turned into ``SamplingParams`` message fields
    (``json_schema`` text and ``json_schema_strict``); ValueError for an obvious mistake."""
    given = [name for name in FORMAT_KEYWORDS if options.get(name) not in (None, False)]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each set the output's format: pass only one")
    fields = {name: value for name, value in options.items() if name not in FORMAT_KEYWORDS}
    if not given:
        return fields
    name = given[0]
    value = options[name]
    if name == "response_format":
        value, name = _from_response_format(value), "json_schema"
        if value is None:  # {"type": "text"}
            return fields
        if value is True:
            fields["json_object"] = True
            return fields
    if name == "json_schema":
        schema = value
        if isinstance(schema, JsonSchema):
            fields["json_schema_strict"] = schema.strict
            schema = schema.schema
        fields["json_schema"] = _schema_text(schema)
    elif name == "choice":
        if isinstance(value, str) or not value:
            raise ValueError(f"choice must be a non-empty list of strings, got {value!r}")
        fields["choice"] = list(value)
    else:
        fields[name] = value
    return fields


def _from_response_format(value: Any) -> JsonSchema | bool | None:
    if not isinstance(value, Mapping):
        raise ValueError(f"response_format must be a dict like {{'type': 'json_object'}}, "
                         f"got {value!r}")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return True
    if kind != "json_schema":
        raise ValueError(f"response_format type must be 'text', 'json_object' or "
                         f"'json_schema', got {kind!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or spec.get("schema") is None:
        raise ValueError("response_format {'type': 'json_schema'} needs 'json_schema': "
                         "{'name': ..., 'schema': {...}}")
    strict = spec.get("strict")
    return JsonSchema(spec["schema"], True if strict is None else strict)


def _schema_text(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if hasattr(schema, "model_json_schema"):  # a pydantic model class
        schema = schema.model_json_schema()
    if not isinstance(schema, Mapping):
        raise ValueError(f"json_schema must be a dict, JSON text or a pydantic model, got "
                         f"{type(schema).__name__}")
    return json.dumps(schema)
