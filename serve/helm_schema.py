"""The ``engine`` section of the Helm chart's values.schema.json, generated from
:class:`~serve.engine.config.EngineOptions` so the chart and the service accept exactly the
same keys and values. ``python -m serve.helm_schema`` rewrites the file; a test fails when
the two drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from serve.engine.config import EngineOptions

VALUES_SCHEMA = Path(__file__).resolve().parents[1] / "helm/mistral-serve/values.schema.json"

# Keys the chart sets from its own values: refused in ``engine`` with where they belong.
CHART_OWNED = {"model": "set model.path instead",
               "tensor_parallel_size": "set tensorParallelSize instead"}


def _plain(node: Any) -> Any:
    """Drop pydantic's titles: the chart's schema documents itself through descriptions."""
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items() if key != "title"}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """``{"$ref": "#/$defs/X"}`` replaced by X itself (a chart schema has no $defs)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def engine_values_schema() -> dict[str, Any]:
    schema = _plain(EngineOptions.model_json_schema())
    # Nested sections (speculative_config) are inlined.
    schema = _inline(schema, schema.pop("$defs", {}))
    properties = dict(schema["properties"])
    for key, hint in CHART_OWNED.items():
        properties[key] = {"not": {}, "description": hint}
    return {"type": "object",
            "description": "EngineConfig keyword arguments, snake_case "
                           "(serve/engine/config.py EngineOptions)",
            "additionalProperties": False, "properties": properties}


def write_values_schema(path: Path = VALUES_SCHEMA) -> None:
    schema = json.loads(path.read_text())
    schema["properties"]["engine"] = engine_values_schema()
    path.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    write_values_schema(Path(sys.argv[1]) if len(sys.argv) > 1 else VALUES_SCHEMA)
