"""Pipelines made of several files: ``include:`` fragments and ``extends:`` a base pipeline.

A pipeline file may name a base pipeline (``extends: base.yaml``) and fragments (``include: [a.yaml,
...]``): files holding any of a pipeline's fields (nodes, providers, defaults, params, state, edges...),
which need no ``version`` or ``name``. Paths are relative to the file that names them. The composed
document is the base, then each fragment in order, then the file's own fields, each laid over the one
before: mappings merge key by key (a node's fields too, so ``nodes: {classify: {model: x}}`` overrides
one field of a base node), a ``null`` removes the key (``nodes: {old_step: null}``), ``edges`` lists are
concatenated, and any other value replaces the one below. Fragments may include others; a file that
includes itself, directly or through others, is an error naming the chain.

Every value keeps the file, line and column it was written at, so validation of the composed pipeline
(JSON Schema and the checks after it) points into the file that wrote the offending value. A relative
``path`` of a node that comes from a file in another folder is rebased onto the root file's folder, so
paths stay relative to the file that wrote them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError, Diagnostic
from engine.spec.positions import Document, JsonPath, Limits, SourceMap, Span, format_path

__all__ = ["COMPOSE_KEYS", "compose", "rebase_node_paths", "tag_document"]

COMPOSE_KEYS = ("extends", "include")
_CONCAT = frozenset({("edges",)})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
Reader = Callable[..., Document]


def compose(doc: Document, reader: Reader, limits: Limits | None = None) -> Document:
    """``doc`` with its ``extends`` and ``include`` resolved (``doc`` itself when it names neither)."""
    if not isinstance(doc.data, dict) or not any(k in doc.data for k in COMPOSE_KEYS):
        return doc
    root_dir = os.path.dirname(os.path.abspath(doc.path))
    data, smap = _compose(doc, reader, limits, (os.path.abspath(doc.path),), root_dir)
    return Document(doc.path, data, SourceMap(doc.path, smap.keys, smap.values, smap.origins), doc.format)


def _compose(
    doc: Document, reader: Reader, limits: Limits | None, chain: tuple[str, ...], root_dir: str
) -> tuple[Any, SourceMap]:
    data = doc.data
    if not isinstance(data, dict):
        return data, doc.source_map
    layers: list[tuple[Any, SourceMap]] = []
    extends = data.get("extends")
    if extends is not None:
        if not isinstance(extends, str):
            raise compose_error(doc, ("extends",), "`extends` names one pipeline file (a string)")
        layers.append(_layer(doc, extends, ("extends",), reader, limits, chain, root_dir))
    include = data.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise compose_error(doc, ("include",), "`include` is a list of file paths")
        for i, ref in enumerate(include):
            layers.append(_layer(doc, ref, ("include", i), reader, limits, chain, root_dir))
    own = {k: v for k, v in data.items() if k not in COMPOSE_KEYS}
    own_map = _without(doc.source_map, COMPOSE_KEYS)
    merged, merged_map = layers[0] if layers else ({}, SourceMap(doc.path))
    for layer in [*layers[1:], (own, own_map)]:
        merged, merged_map = _merge(merged, merged_map, layer[0], layer[1])
    return merged, merged_map


def _layer(
    doc: Document,
    ref: str,
    where: JsonPath,
    reader: Reader,
    limits: Limits | None,
    chain: tuple[str, ...],
    root_dir: str,
) -> tuple[Any, SourceMap]:
    target = ref if os.path.isabs(ref) or _URL.match(ref) else os.path.join(os.path.dirname(doc.path), ref)
    absolute = os.path.abspath(target)
    if absolute in chain:
        names = " -> ".join(_shown(p) for p in (*chain, absolute))
        raise compose_error(
            doc, where, f"include cycle: {names}", "a file may not include itself, directly or not"
        )
    if not os.path.isfile(target):
        raise compose_error(doc, where, f"{format_path(where)} names {ref!r}, which is not a file ({target})")
    sub = reader(target, limits=limits)
    if not isinstance(sub.data, dict):
        raise compose_error(sub, (), "an included or extended file must be a mapping of pipeline fields")
    tagged = tag_document(sub)
    data, smap = _compose(tagged, reader, limits, (*chain, absolute), root_dir)
    return rebase_node_paths(data, os.path.dirname(absolute), root_dir), smap


def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def tag_document(doc: Document) -> Document:
    """``doc`` with every span naming its file, so positions survive the merge into another document."""

    def tag(spans: dict[JsonPath, Span]) -> dict[JsonPath, Span]:
        return {k: Span(v.line, v.col, v.path or doc.path) for k, v in spans.items()}

    smap = SourceMap(
        doc.path, tag(doc.source_map.keys), tag(doc.source_map.values), dict(doc.source_map.origins)
    )
    return Document(doc.path, doc.data, smap, doc.format)


def rebase_node_paths(data: Any, from_dir: str, root_dir: str) -> Any:
    """Relative node ``path`` values written in ``from_dir``, made relative to the root file's folder."""
    if from_dir == root_dir or not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        return data
    nodes = {}
    for name, node in data["nodes"].items():
        path = node.get("path") if isinstance(node, dict) else None
        if (
            isinstance(path, str)
            and path
            and not os.path.isabs(path)
            and not _URL.match(path)
            and "${" not in path
        ):
            node = {**node, "path": os.path.relpath(os.path.join(from_dir, path), root_dir)}
        nodes[name] = node
    return {**data, "nodes": nodes}


def _without(smap: SourceMap, keys: tuple[str, ...]) -> SourceMap:
    keep = lambda spans: {k: v for k, v in spans.items() if not (k and k[0] in keys)}  # noqa: E731
    return SourceMap(smap.path, keep(smap.keys), keep(smap.values), dict(smap.origins))


def _merge(base: Any, bmap: SourceMap, over: Any, omap: SourceMap) -> tuple[Any, SourceMap]:
    out = SourceMap(bmap.path, dict(bmap.keys), dict(bmap.values), dict(bmap.origins))
    return _merge_at((), base, over, out, omap), out


def _merge_at(where: JsonPath, base: Any, over: Any, out: SourceMap, omap: SourceMap) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            here = (*where, key)
            if value is None:
                merged.pop(key, None)
                _drop(out, here)
            elif key in base:
                merged[key] = _merge_at(here, base[key], value, out, omap)
                _copy(out, omap, here, here, only_self=True)
            else:
                merged[key] = value
                _copy(out, omap, here, here)
        return merged
    if where in _CONCAT and isinstance(base, list) and isinstance(over, list):
        for i in range(len(over)):
            _copy(out, omap, (*where, i), (*where, len(base) + i))
        return [*base, *over]
    _drop(out, where)
    _copy(out, omap, where, where)
    return over


def _drop(out: SourceMap, where: JsonPath) -> None:
    for spans in (out.keys, out.values):
        for k in [k for k in spans if k[: len(where)] == where]:
            del spans[k]


def _copy(
    out: SourceMap, omap: SourceMap, source: JsonPath, target: JsonPath, only_self: bool = False
) -> None:
    n = len(source)
    for spans, dest in ((omap.keys, out.keys), (omap.values, out.values)):
        for k, span in spans.items():
            if k == source or (not only_self and k[:n] == source):
                dest[tuple(target) + tuple(k[n:])] = span


def compose_error(doc: Document, where: JsonPath, message: str, hint: str = "") -> ConfigError:
    """A composition problem at ``where``, located in the file that wrote it."""
    span = doc.source_map.locate(where, prefer="value")
    return ConfigError(
        [
            Diagnostic(
                doc.file_of(span),
                span.line,
                span.col,
                message,
                code="compose",
                json_path=format_path(where),
                hint=hint,
            )
        ]
    )
