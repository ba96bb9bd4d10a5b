"""Turn pydantic validation errors into located, one-line diagnostics with hints.

Pydantic reports a ``loc`` through the model types (it includes union tags such as ``read_csv`` or
``list[str]``); this module walks that ``loc`` over the actual document to find the data path, asks the
source map where it was written, and rewrites the message for a person: unknown keys and ops get a
did-you-mean drawn from the JSON Schema, missing fields point at the mapping that lacks them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from engine.errors import Diagnostic
from engine.spec.document import Document, JsonPath, format_path


def explain(exc: ValidationError, doc: Document, schema: Mapping[str, Any]) -> list[Diagnostic]:
    """One diagnostic per distinct problem, in file order."""
    found: dict[tuple[JsonPath, str], Diagnostic] = {}
    for err in exc.errors(include_url=False):
        diag = _one(err, doc, schema)
        key = (_path_of(err, doc.data), diag.code)
        previous = found.get(key)
        if previous is None:
            found[key] = diag
        elif diag.message not in previous.message and diag.code == "wrong_type":
            merged = f"{previous.message}, or {diag.message.removeprefix('expected ')}"
            found[key] = Diagnostic(**{**previous.__dict__, "message": merged})
    return sorted(found.values(), key=lambda d: (d.line, d.col))


def _path_of(err: ErrorDetails, data: Any) -> JsonPath:
    """The longest prefix of ``loc`` that exists in the data, skipping type and tag segments."""
    out: list[str | int] = []
    cur = data
    for seg in err["loc"]:
        if (isinstance(cur, dict) and isinstance(seg, str) and seg in cur) or (
            isinstance(cur, list) and isinstance(seg, int) and 0 <= seg < len(cur)
        ):
            out.append(seg)
            cur = cur[seg]  # type: ignore[index]
    return tuple(out)


def _one(err: ErrorDetails, doc: Document, schema: Mapping[str, Any]) -> Diagnostic:
    kind = err["type"]
    where = _path_of(err, doc.data)
    last = err["loc"][-1] if err["loc"] else ""
    smap = doc.source_map
    hint = ""
    prefer: str = "value"
    code = "invalid"
    if last == "[key]":  # a mapping key (a node or state-field name) is itself invalid
        prefer, code = "key", "bad_name"
        message = f"{_show(err.get('input'))} is not a valid name"
        hint = (
            "a name starts with a letter or '_' and holds only letters, digits, '_' and '-'"
            if kind == "string_pattern_mismatch"
            else err["msg"]
        )
    elif kind == "extra_forbidden":
        prefer, code = "key", "unknown_key"
        parent = where[:-1] if where and where[-1] == last else where
        allowed = sorted(_allowed_keys(schema, doc.data, parent))
        message = f"unknown key '{last}'"
        hint = _did_you_mean(str(last), allowed) or (f"allowed keys: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        prefer, code = "key", "missing"
        message = f"missing required field '{_field_name(last)}'"
        if where:
            hint = f"add it to {format_path(where)}"
    elif kind == "union_tag_invalid":
        code = "unknown_op"
        ctx = err.get("ctx") or {}
        tag = ctx.get("tag", "")
        ops = sorted(t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(","))
        where = (*where, "op")
        message = f"unknown op '{tag}'"
        hint = _did_you_mean(str(tag), ops) or "`headrace schema` lists every op"
    elif kind == "union_tag_not_found":
        prefer, code = "key", "missing"
        message = "the node has no 'op'"
        hint = "add `op:` to say what the node does (e.g. read_csv, sql, write_parquet)"
    elif kind == "literal_error":
        code = "wrong_value"
        expected = (err.get("ctx") or {}).get("expected", "")
        message = f"{_show(err.get('input'))} is not allowed here; expected {expected}"
    elif (
        kind.endswith("_type")
        or kind.endswith("_parsing")
        or kind in ("model_type", "dict_type", "list_type")
    ):
        code = "wrong_type"
        message = f"expected {_expected(kind, err)}, got {_show(err.get('input'))}"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if err.get("input") is not None and not isinstance(err.get("input"), (dict, list)):
            message += f" (got {_show(err.get('input'))})"
    span = smap.locate(where, prefer="key" if prefer == "key" else "value")
    return Diagnostic(
        doc.file_of(span),
        span.line,
        span.col,
        message,
        code=code,
        json_path=format_path(where),
        hint=hint,
        origin=smap.origin(where),
    )


_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}


def _expected(kind: str, err: ErrorDetails) -> str:
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    return err["msg"].removeprefix("Input should be ").removeprefix("a valid ")


def _field_name(seg: str | int) -> str:
    return "from" if seg == "from_" else str(seg)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _allowed_keys(schema: Mapping[str, Any], data: Any, where: JsonPath) -> set[str]:
    """The property names the schema allows at ``where`` for this data."""
    node: Mapping[str, Any] | None = _resolve(schema, schema, data)
    cur = data
    for seg in where:
        if node is None:
            return set()
        cur = cur[seg] if isinstance(cur, (dict, list)) else None  # type: ignore[index]
        node = _step(schema, node, seg, cur)
    if node is None:
        return set()
    return set((node.get("properties") or {}).keys())


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any], data: Any) -> Mapping[str, Any] | None:
    seen = 0
    while seen < 32:
        seen += 1
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            node = root["$defs"][name]
            continue
        switch = node.get("allOf")
        if switch and all("if" in c and "then" in c for c in switch):  # the switch on `op` (schema.py)
            if not isinstance(data, dict):
                return None
            chosen = [c["then"] for c in switch if _matches(c["if"], data)]
            if len(chosen) != 1:
                return None
            node = chosen[0]
            continue
        choices = node.get("oneOf") or node.get("anyOf")
        if choices:
            disc = node.get("discriminator")
            if disc and isinstance(data, dict):
                target = (disc.get("mapping") or {}).get(data.get(disc["propertyName"]))
                if target is None:
                    return None
                node = {"$ref": target}
                continue
            objects = [c for c in choices if "$ref" in c or c.get("type") == "object"]
            if not objects:
                return None
            node = objects[0]
            continue
        return node
    return None


def _matches(condition: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Whether ``data`` has the ``const`` values an ``if`` of the op switch asks for."""
    wanted = condition.get("properties") or {}
    return all(name in data and data[name] == sub.get("const") for name, sub in wanted.items())


def _step(
    root: Mapping[str, Any], node: Mapping[str, Any], seg: str | int, data: Any
) -> Mapping[str, Any] | None:
    if isinstance(seg, int):
        items = node.get("items")
        return _resolve(root, items, data) if isinstance(items, dict) else None
    props = node.get("properties") or {}
    if seg in props:
        return _resolve(root, props[seg], data)
    extra = node.get("additionalProperties")
    return _resolve(root, extra, data) if isinstance(extra, dict) else None
