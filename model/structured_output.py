"""What a request's output must look like: a JSON schema, any JSON object, a regex, one of a
list of strings, or an EBNF grammar (vLLM's ``StructuredOutputsParams``).

Plain data with no torch or grammar-library import: it travels inside ``SamplingParams`` from
the front ends to the engine and, in each ``NewRequest``, to the model runner, so it must stay
small and picklable. ``model/grammar.py`` compiles it (once per distinct ``key``) and matches
the generated tokens against it.

Example::

    StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}})
    StructuredOutputsParams(choice=["yes", "no"])
    StructuredOutputsParams(regex=r"\\d{3}-\\d{4}")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Kinds, in the order the fields are checked; exactly one is set.
KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of ``json`` (a JSON Schema, as a dict or as JSON text), ``json_object``
    (any JSON object), ``regex``, ``choice`` (the output is one of these strings) and
    ``grammar`` (EBNF, in the GBNF dialect xgrammar reads).

    ``strict`` applies to ``json``: True (the default) refuses object properties and array
    items the schema does not name, as OpenAI's strict mode does; False follows JSON Schema's
    own rules (unnamed properties allowed unless ``additionalProperties`` is false).
    After construction ``json`` is compact JSON text and ``choice`` a tuple.
    """

    json: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            named = ", ".join(given) if given else "none"
            raise ValueError("structured_outputs must set exactly one of json, json_object, "
                             f"regex, choice and grammar; got {named}")
        if not isinstance(self.json_object, bool):
            raise ValueError(f"json_object must be a bool, got {self.json_object!r}")
        if not isinstance(self.strict, bool):
            raise ValueError(f"strict must be a bool, got {self.strict!r}")
        if self.json is not None:
            object.__setattr__(self, "json", _schema_text(self.json))
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            object.__setattr__(self, "choice", _choices(self.choice))

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    @property
    def key(self) -> tuple[str, str, bool]:
        """What a compiled grammar is cached under: equal keys compile to the same grammar."""
        kind = self.kind
        if kind == "choice":
            assert isinstance(self.choice, tuple)
            return kind, json.dumps(list(self.choice)), False
        if kind == "json_object":
            return kind, "", False
        return kind, str(getattr(self, kind)), self.strict and kind == "json"

    @classmethod
    def of(cls, value: StructuredOutputsParams | dict[str, Any]) -> StructuredOutputsParams:
        """From itself or from its fields as a dict (``{"choice": ["a", "b"]}``)."""
        if isinstance(value, StructuredOutputsParams):
            return value
        if not isinstance(value, dict):
            raise ValueError("structured_outputs must be a StructuredOutputsParams or a dict of "
                             f"its fields, got {type(value).__name__}")
        unknown = sorted(set(value) - {*KINDS, "strict"})
        if unknown:
            raise ValueError(f"structured_outputs has unknown fields {unknown}; known: "
                             f"{', '.join((*KINDS, 'strict'))}")
        return cls(**value)


def _schema_text(schema: str | dict[str, Any]) -> str:
    """Compact JSON text of a schema; property order is kept (it orders the output)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the JSON schema is not valid JSON: {exc}") from None
    if isinstance(schema, bool):
        raise ValueError("the JSON schema must be an object, got a bool: send "
                         "{\"type\": ...} with the properties the output must have")
    if not isinstance(schema, dict):
        raise ValueError(f"the JSON schema must be an object, got {type(schema).__name__}")
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _choices(choice: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(choice, str) or not isinstance(choice, (list, tuple)):
        raise ValueError(f"choice must be a list of strings, got {choice!r}")
    if not choice:
        raise ValueError("choice must hold at least one string")
    for item in choice:
        if not isinstance(item, str) or not item:
            raise ValueError(f"choice must hold non-empty strings, got {item!r}")
    return tuple(choice)
