"""The ``offline`` provider: deterministic answers with no network, for examples, quickstarts and dry runs.

Every answer is a pure function of the request, so a pipeline run offline gives the same output on every
machine. Config::

    answers: {invoice: billing, crash: bug}   # first key found in the prompt (case-insensitive) wins
    latency_s: 0.0                            # an asyncio.sleep per call, to rehearse concurrency

With ``labels``, the answer is the matching ``answers`` rule, else a label picked from the prompt's hash.
With an ``output_schema``, it is a small valid instance of the schema. Otherwise it is a matching rule, else a
short text derived from the hash. Token usage is estimated as ceil(characters / 4), as the loopback server
and most pricing rules of thumb do.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from operators.providers.base import ConfigReader, LlmRequest, LlmResponse
from operators.providers.errors import ProviderConfigError

NAME = "offline"
_WORDS = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper")


def estimate_tokens(text: str) -> int:
    """A provider-neutral token estimate: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


class OfflineProvider:
    """Answers computed from the request alone; see the module docstring for the config."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        reader = ConfigReader(NAME, config or {}, frozenset({"answers", "latency_s"}))
        answers = reader.config.get("answers") or {}
        if not isinstance(answers, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in answers.items()
        ):
            raise ProviderConfigError("`answers` must map non-empty substrings to answers", provider=NAME)
        self._answers = [(key.casefold(), value) for key, value in answers.items()]
        self._latency_s = reader.number("latency_s", 0.0)

    def __repr__(self) -> str:
        return f"OfflineProvider(answers={len(self._answers)}, latency_s={self._latency_s})"

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Answer deterministically; see ``Provider.call``."""
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        digest = request.fingerprint()
        rule = next((answer for key, answer in self._answers if key in request.prompt.casefold()), None)
        parsed: Any = None
        stop_reason = "end_turn"
        if request.output_schema is not None:
            parsed = schema_instance(dict(request.output_schema), seed=digest)
            text, output_text, stop_reason = None, json.dumps(parsed), "tool_use"
        elif request.labels:
            text = rule if rule is not None else request.labels[int(digest[:8], 16) % len(request.labels)]
            parsed, output_text = text, text
        else:
            text = rule if rule is not None else _sentence(digest)
            # Honour max_tokens as a real model would: cut the text and say so.
            if estimate_tokens(text) > request.max_tokens:
                text, stop_reason = text[: request.max_tokens * 4], "max_tokens"
            output_text = text
        return LlmResponse(
            text=text,
            parsed=parsed,
            input_tokens=estimate_tokens((request.system or "") + request.prompt),
            output_tokens=estimate_tokens(output_text),
            model=request.model,
            latency_s=self._latency_s,
            stop_reason=stop_reason,
            request_id=f"offline-{digest[:16]}",
            source="offline",
        )

    async def close(self) -> None:
        """Nothing to release."""


def _sentence(digest: str) -> str:
    words = [_WORDS[int(digest[i : i + 2], 16) % len(_WORDS)] for i in range(0, 8, 2)]
    return f"Offline answer {digest[:8]}: {' '.join(words)}."


# ---------------------------------------------------------------- schema instances


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def schema_instance(schema: Mapping[str, Any], *, seed: str = "0") -> Any:
    """A small instance satisfying ``schema`` (JSON Schema draft 2020-12, the subset models are given).

    Required properties only (a recursive ``$ref`` is never expanded past what is required); ``const``
    and ``enum`` give their first value; strings honour ``format`` and length; numbers honour bounds and
    ``multipleOf``; arrays get ``minItems`` items. ``seed`` varies free-text strings between requests.
    ``pattern`` is not supported (no model-free way to satisfy an arbitrary regex).
    """
    return _make(schema, schema, seed, 0)


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    node: Any = root
    for key in [k for k in ref[1:].split("/") if k]:
        node = node[key.replace("~1", "/").replace("~0", "~")]
    return node


def _make(schema: Any, root: Mapping[str, Any], seed: str, depth: int) -> Any:
    if depth > 32:
        raise ValueError("schema nests deeper than 32 levels (a required recursive $ref?)")
    if not isinstance(schema, Mapping):
        return None  # `true` accepts anything, null included
    if "$ref" in schema:
        return _make(_resolve(root, schema["$ref"]), root, seed, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _make(schema[key][0], root, seed, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if "$ref" in part else part
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        return _make(merged, root, seed, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: _make(properties.get(name, {}), root, seed, depth + 1)
            for name in schema.get("required", [])
        }
    if kind == "array":
        prefix = list(schema.get("prefixItems", []))
        count = max(int(schema.get("minItems", 0)), len(prefix) if schema.get("minItems") else 0)
        items = [_make(prefix[i], root, seed, depth + 1) for i in range(min(count, len(prefix)))]
        items += [_make(schema.get("items", {}), root, seed, depth + 1) for _ in range(count - len(items))]
        if schema.get("uniqueItems") and len(items) > 1:
            raise ValueError("cannot build distinct items for a `uniqueItems` array of minItems > 1")
        return items
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(schema, seed)


def _string(schema: Mapping[str, Any], seed: str) -> str:
    text = _FORMATS.get(schema.get("format", ""), f"offline-{seed[:8]}")
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if high is not None and len(text) > int(high):
        text = text[: int(high)]
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    step = schema.get("multipleOf") or (1 if integer else None)
    value: float = 0 if low is None else low
    if high is not None and value > high:
        value = high
    if step is not None:
        value = math.ceil(value / step) * step
    # Exclusive bounds and steps: walk up by one step (or a small fraction) until the value fits.
    nudge = step or (abs(value) * 1e-6 or 1e-6)
    for _ in range(1000):
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value += nudge
            continue
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            value -= nudge
            continue
        break
    if integer:
        return int(value)
    return float(value)
