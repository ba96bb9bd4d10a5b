"""A small valid instance of a JSON Schema (or of Gemini's OpenAPI subset), to answer structured calls.

A forced Anthropic tool needs an ``input`` that satisfies its ``input_schema``; Gemini's JSON mode needs text
that satisfies ``responseSchema`` / ``responseJsonSchema``. Without a responder the server answers with the
instance built here, so structured-output code paths can be tested with no prompt engineering.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any, ClassVar


def schema_instance(schema: dict[str, Any], *, seed: str = "0") -> Any:
    """A small instance that satisfies ``schema`` (JSON Schema, or Gemini's OpenAPI subset).

    Every declared property is filled (optional ones too, as a model would, except inside a recursive
    ``$ref``); enums and ``const`` give their first value; strings honour ``format`` and length bounds;
    numbers honour bounds and ``multipleOf``; arrays get ``max(minItems, 1)`` items within ``maxItems``.
    """
    return _Instance(schema, seed).make(schema, (), 0)


class _Instance:
    _FORMATS: ClassVar[dict[str, str]] = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00Z",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "url": "https://example.com/",
        "ipv4": "127.0.0.1",
        "hostname": "example.com",
    }

    def __init__(self, root: dict[str, Any], seed: str) -> None:
        self.root = root
        self.seed = seed

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for key in ref.lstrip("#/").split("/") if ref != "#" else []:
            node = node[key.replace("~1", "/").replace("~0", "~")]
        return node

    def make(self, schema: Any, refs: tuple[str, ...], depth: int) -> Any:
        if not isinstance(schema, dict):
            return None if schema is False else "x"
        if "$ref" in schema:
            return self.make(self.resolve(schema["$ref"]), (*refs, schema["$ref"]), depth)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):  # the first branch that is not just null
                branches = [b for b in schema[key] if not (isinstance(b, dict) and b.get("type") == "null")]
                return self.make((branches or schema[key])[0], refs, depth)
        if schema.get("allOf"):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part["$ref"]) if "$ref" in part else part
                merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
            return self.make(merged, refs, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        kind = (
            kind or ("object" if "properties" in schema else "array" if "items" in schema else "string")
        ).lower()
        if kind == "object":
            return self.make_object(schema, refs, depth)
        if kind == "array":
            return self.make_array(schema, refs, depth)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.make_string(schema)

    def make_object(self, schema: dict[str, Any], refs: tuple[str, ...], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        recursive = len(refs) != len(set(refs)) or depth > 6
        order = schema.get("propertyOrdering") or schema.get("property_ordering") or list(properties)
        order = [*order, *(name for name in properties if name not in order)]
        instance = {
            name: self.make(properties[name], refs, depth + 1)
            for name in order
            if name in properties and (name in required or not recursive)
        }
        # A required name with no declared property takes the additionalProperties schema (any value).
        extra = schema.get("additionalProperties")
        for name in sorted(required - set(instance)):
            instance[name] = self.make(extra if isinstance(extra, dict) else {}, refs, depth + 1)
        return instance

    def make_array(self, schema: dict[str, Any], refs: tuple[str, ...], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        count = max(int(schema.get("minItems", 0)), len(prefix), 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items", {})
        return [self.make(prefix[i] if i < len(prefix) else items, refs, depth + 1) for i in range(count)]

    def make_string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            text = str(uuid.UUID(hashlib.sha256(self.seed.encode()).hexdigest()[:32]))
        else:
            text = self._FORMATS.get(str(fmt), f"value-{self.seed}")
        text = text.ljust(int(schema.get("minLength", 0)), "x")
        return text[: int(schema["maxLength"])] if "maxLength" in schema else text


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """0 when the bounds allow it, else the nearest value inside them (a multiple of multipleOf)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # Draft 4 spells exclusivity as a boolean flag on minimum / maximum.
    if isinstance(xlow, bool):
        low, xlow = (None, low) if xlow else (low, None)
    if isinstance(xhigh, bool):
        high, xhigh = (None, high) if xhigh else (high, None)

    def fits(value: float) -> bool:
        return (
            (low is None or value >= low)
            and (high is None or value <= high)
            and (xlow is None or value > xlow)
            and (xhigh is None or value < xhigh)
        )

    if fits(0):
        return 0
    lower = max((v for v in (low, xlow) if v is not None), default=None)
    upper = min((v for v in (high, xhigh) if v is not None), default=None)
    step = schema.get("multipleOf") or (1 if integer else None)
    if lower is not None and step:
        value = math.ceil(lower / step) * step
        value = value if fits(value) else value + step
    elif upper is not None and step:
        value = math.floor(upper / step) * step
        value = value if fits(value) else value - step
    elif lower is not None:
        value = (lower + upper) / 2 if upper is not None else lower + 1
    else:
        value = upper - 1 if upper is not None else 0
    return int(value) if integer else value


# A schema that exercises most of what the fakes and providers support; shared by the tests.
TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["bug", "billing", "other"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": 0},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 2, "maxItems": 4},
        "customer": {"$ref": "#/$defs/customer"},
        "notes": {"type": ["string", "null"], "maxLength": 8},
    },
    "required": ["label", "confidence", "priority", "tags", "customer"],
    "additionalProperties": False,
    "$defs": {
        "customer": {
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email"},
                "id": {"type": "string", "format": "uuid"},
                "since": {"type": "string", "format": "date"},
                "referrer": {"$ref": "#/$defs/customer"},
            },
            "required": ["email", "id"],
        }
    },
}
