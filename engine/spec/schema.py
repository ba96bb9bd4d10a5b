"""The published JSON Schema of the pipeline format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.spec.models import FORMAT_VERSION
from engine.spec.registry import pipeline_model

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = f"https://headrace.dev/schema/pipeline-v{FORMAT_VERSION}.json"


def json_schema() -> dict[str, Any]:
    """The draft 2020-12 schema of format ``FORMAT_VERSION``, with every registered op."""
    schema = _switch_on_op(
        _strict_names(pipeline_model().model_json_schema(by_alias=True, mode="validation"))
    )
    schema["properties"] = {**_COMPOSE_PROPERTIES, **schema["properties"]}
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": f"headrace pipeline (format v{FORMAT_VERSION})",
        **{k: v for k, v in schema.items() if k != "title"},
    }


# resolved by the loader before validation (engine/spec/compose.py), so the models never see them
_COMPOSE_PROPERTIES: dict[str, Any] = {
    "extends": {
        "type": "string",
        "description": "A base pipeline file (relative to this one) whose fields this file overrides: "
        "mappings merge key by key, `null` removes a key, `edges` are appended.",
    },
    "include": {
        "type": "array",
        "items": {"type": "string"},
        "description": "Fragment files (relative to this one) holding pipeline fields (nodes, providers, "
        "defaults...), merged in order under this file's own fields.",
    },
}


def op_models(schema: Mapping[str, Any]) -> dict[str, str]:
    """Each op of ``schema`` (as :func:`json_schema` gives it) and the name of its model in ``$defs``."""
    switch = schema["properties"]["nodes"]["additionalProperties"]["allOf"]
    return {c["if"]["properties"]["op"]["const"]: c["then"]["$ref"].split("/")[-1] for c in switch}


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


def _switch_on_op(node: Any) -> Any:
    """Rewrite pydantic's ``oneOf`` + ``discriminator`` unions as an ``enum`` of the tags and one
    ``if``/``then`` per tag.

    ``discriminator`` is an OpenAPI keyword, not JSON Schema: validators in strict mode (ajv) refuse the
    schema, and the others ignore it and try every ``oneOf`` branch, so one typo in a node reported an
    error per op. With the switch an unknown ``op`` is one ``enum`` error, and a node of a known op is
    checked against that op's model only.
    """
    if isinstance(node, list):
        return [_switch_on_op(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _switch_on_op(v) for k, v in node.items()}
    tag = out.get("discriminator")
    if not isinstance(tag, dict) or "oneOf" not in out:
        return out
    name, mapping = tag["propertyName"], tag["mapping"]
    del out["discriminator"], out["oneOf"]
    out.update(
        {
            "type": "object",
            "required": [name],
            "properties": {name: {"enum": sorted(mapping), "description": "What the node does."}},
            "allOf": [
                {
                    "if": {"type": "object", "properties": {name: {"const": value}}, "required": [name]},
                    "then": {"$ref": ref},
                }
                for value, ref in sorted(mapping.items())
            ],
        }
    )
    return out
