"""The published JSON Schema of the pipeline format."""

from __future__ import annotations

from typing import Any

from engine.spec.models import FORMAT_VERSION
from engine.spec.registry import pipeline_model

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = f"https://headrace.dev/schema/pipeline-v{FORMAT_VERSION}.json"


def json_schema() -> dict[str, Any]:
    """The draft 2020-12 schema of format ``FORMAT_VERSION``, with every registered op."""
    schema = _strict_names(pipeline_model().model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": f"headrace pipeline (format v{FORMAT_VERSION})",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _strict_names(node: Any) -> Any:
    """Rewrite ``patternProperties`` maps as ``propertyNames`` + ``additionalProperties``.

    Pydantic describes ``dict[NodeName, X]`` with ``patternProperties``, which lets a key that misses
    the pattern through with any value; the rewrite makes editors flag such keys, as headrace does.
    """
    if isinstance(node, list):
        return [_strict_names(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict_names(v) for k, v in node.items()}
    patterns = out.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in out:
        ((pattern, value),) = patterns.items()
        del out["patternProperties"]
        out["propertyNames"] = {"pattern": pattern}
        out["additionalProperties"] = value
    return out
