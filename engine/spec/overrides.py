"""``--set KEY=VALUE`` overrides, applied to the raw document before validation.

Values parse as YAML scalars (``--set nodes.x.n=3`` sets an integer; quote to keep a string). The
document is copied along the override's path, never mutated in place: YAML aliases share containers,
and an override must change only the place it names.
"""

from __future__ import annotations

from typing import Any

import yaml

from engine.errors import ConfigError, Diagnostic
from engine.spec.document import Document, JsonPath, SourceMap, resolve_plain_scalar


def parse_override(text: str, path: str = "--set") -> tuple[JsonPath, Any]:
    """Split ``a.b.0.c=VALUE`` into a JSON path and a parsed value."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(
            [
                Diagnostic(
                    path,
                    1,
                    1,
                    f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. nodes.input.path=data/x.csv",
                    code="bad_override",
                )
            ]
        )
    where: JsonPath = tuple(int(p) if p.isdigit() else p for p in parts)
    return where, _parse_value(raw, text, path)


def _parse_value(raw: str, text: str, path: str) -> Any:
    stripped = raw.strip()
    if not stripped:
        return ""
    if stripped[0] in "[{\"'":
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as exc:
            raise ConfigError(
                [
                    Diagnostic(
                        path,
                        1,
                        1,
                        f"--set {text!r}: the value is not valid YAML ({exc})",
                        code="bad_override",
                    )
                ]
            ) from None
    return resolve_plain_scalar(stripped)


def apply_overrides(doc: Document, overrides: list[str] | tuple[str, ...]) -> Document:
    """A new document with each override applied in order; the source map remembers which ones."""
    data = doc.data
    smap = SourceMap(
        doc.source_map.path,
        dict(doc.source_map.keys),
        dict(doc.source_map.values),
        dict(doc.source_map.origins),
    )
    for text in overrides:
        where, value = parse_override(text, doc.path)
        data = _set(data, where, value, doc, text)
        smap.origins[where] = f"--set {text}"
    return Document(doc.path, data, smap, doc.format)


def _set(node: Any, where: JsonPath, value: Any, doc: Document, text: str, done: JsonPath = ()) -> Any:
    """``node`` with ``where`` set to ``value``; ``done`` is the path to ``node``, to locate errors."""
    if not where:
        return value
    head, rest = where[0], where[1:]
    if isinstance(node, list):
        if not isinstance(head, int) or head > len(node):
            raise _bad(doc, done, text, f"'{head}' is not an index of the list (length {len(node)})")
        copy = list(node)
        if head == len(node):
            copy.append(_set(None, rest, value, doc, text, (*done, head)))
        else:
            copy[head] = _set(node[head], rest, value, doc, text, (*done, head))
        return copy
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise _bad(doc, done, text, f"cannot set '{head}' inside a {type(node).__name__}")
    copy_map = dict(node)
    copy_map[str(head)] = _set(node.get(str(head)), rest, value, doc, text, (*done, str(head)))
    return copy_map


def _bad(doc: Document, where: JsonPath, text: str, message: str) -> ConfigError:
    span = doc.source_map.locate(where)
    return ConfigError(
        [
            Diagnostic(
                doc.path,
                span.line,
                span.col,
                f"--set {text!r}: {message}",
                code="bad_override",
                origin=f"--set {text}",
            )
        ]
    )
