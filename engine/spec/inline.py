"""``pipeline`` nodes of a dataflow: the sub-pipeline file is inlined into its parent when it is loaded.

A dataflow ``pipeline`` node names its input (``input: NODE``) and a dataflow file with exactly one
source and one sink. Loading the parent loads that file (composed, overridden, interpolated and
validated on its own, so its problems keep its own file, line and column), then puts its nodes in the
node's place, each named ``NODE.SUBNODE``: the sub-pipeline's source is replaced by the node's input,
its sink is dropped, and a parent node that reads ``NODE`` reads what the sink would have written. The
result is one plan, compiled, optimised (fused across the boundary) and run as if written in one file;
every inlined value keeps the sub-file's position, so later checks point into the sub-file.

``params`` of the node override the sub-pipeline's, which join the parent's (templates read one
``params`` per run); a name both define with different values is an error. The sub-pipeline's providers
the parent does not set are added; its run-wide settings (``defaults``, ``budget``, ``cache``, ``pii``)
do not apply (a run has its root file's) and each one it sets is a warning. A file that inlines itself,
directly or not, is an error naming the chain. A ``pipeline`` node with no ``input`` is a state-graph
node (``engine.graph.subpipeline``) and is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from engine.errors import ConfigError, Diagnostic
from engine.spec.compose import compose_error as _error
from engine.spec.compose import rebase_node_paths, tag_document
from engine.spec.positions import Document, JsonPath, SourceMap, Span, format_path
from engine.spec.registry import ops

__all__ = ["Inlined", "inline_subpipelines"]

_RUN_WIDE = ("defaults", "budget", "cache", "pii")
_STATE_ONLY = ("in_fields", "out_fields")


@dataclass
class Inlined:
    """The parent document with its dataflow ``pipeline`` nodes inlined."""

    document: Document
    warnings: list[Diagnostic] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # node name prefix -> the file it came from


Loader = Callable[[str, tuple[str, ...]], Any]  # (path, chain) -> LoadedPipeline


def inline_subpipelines(doc: Document, load: Loader, chain: tuple[str, ...]) -> Inlined:
    """``doc`` with every ``pipeline`` node that has an ``input`` replaced by its file's nodes."""
    data = doc.data
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or not any(_is_dataflow_call(n) for n in nodes.values()):
        return Inlined(doc)
    chain = (*chain, os.path.abspath(doc.path))
    out = Inlined(doc)
    for name in [n for n, node in nodes.items() if _is_dataflow_call(node)]:
        out = _inline_one(out, name, load, chain)
    return out


def _is_dataflow_call(node: Any) -> bool:
    return isinstance(node, dict) and node.get("op") == "pipeline" and "input" in node


def _inline_one(current: Inlined, name: str, load: Loader, chain: tuple[str, ...]) -> Inlined:
    doc = current.document
    node = doc.data["nodes"][name]
    where: JsonPath = ("nodes", name)
    _check_node(doc, name, node)
    ref, upstream = node.get("path"), node.get("input")
    if not isinstance(ref, str) or not ref:
        raise _error(doc, (*where, "path"), f"node '{name}': `path` names the sub-pipeline file")
    if not isinstance(upstream, str):
        raise _error(doc, (*where, "input"), f"node '{name}': a dataflow `pipeline` node reads one node")
    for key in _STATE_ONLY:
        if key in node:
            raise _error(
                doc,
                (*where, key),
                f"node '{name}': `{key}` maps state fields; a dataflow `pipeline` node (one with "
                "`input`) passes rows",
                "drop it, or drop `input` to run the file as a state-graph node",
            )
    target = _resolve(doc, ref)
    absolute = os.path.abspath(target)
    if absolute in chain:
        names = " -> ".join(_shown(p) for p in (*chain, absolute))
        raise _error(doc, (*where, "path"), f"pipeline cycle: {names}", "a file may not run itself")
    if not os.path.isfile(target):
        raise _error(doc, (*where, "path"), f"node '{name}': sub-pipeline {ref!r} is not a file ({target})")
    sub = load(target, chain)
    spec = sub.spec
    if spec.edges or any(n.kind == "state" for n in spec.nodes.values()):
        raise _error(
            doc,
            (*where, "input"),
            f"node '{name}': sub-pipeline {ref!r} is a state graph; a dataflow `pipeline` node runs a "
            "dataflow file",
            "drop `input` and run it from a state graph",
        )
    sources = [n for n, s in spec.nodes.items() if s.kind == "source"]
    sinks = [n for n, s in spec.nodes.items() if s.kind == "sink"]
    sink_inputs: tuple[str, ...] = spec.nodes[sinks[0]].inputs() if len(sinks) == 1 else ()
    if len(sources) != 1 or len(sinks) != 1 or len(sink_inputs) != 1 or sink_inputs[0] in sources:
        raise _error(
            doc,
            (*where, "path"),
            f"node '{name}': sub-pipeline {ref!r} has {len(sources)} source(s) and {len(sinks)} sink(s); "
            "a dataflow `pipeline` node runs a file with one source (replaced by the node's input) and "
            "one sink reading one node (the node's output), with a node between them",
        )
    source, sink, output = sources[0], sinks[0], sink_inputs[0]
    sub_doc = tag_document(sub.document)
    sub_data = rebase_node_paths(sub_doc.data, os.path.dirname(absolute), _base_dir(doc))
    renamed = {n: f"{name}.{n}" for n in sub_data["nodes"] if n not in (source, sink)}
    clash = sorted(set(renamed.values()) & set(doc.data["nodes"]))
    if clash:
        raise _error(
            doc, where, f"node '{name}': its sub-pipeline's node {clash[0]!r} clashes with a node here"
        )

    def rename(value: Any) -> Any:
        if isinstance(value, list):
            return [rename(v) for v in value]
        return upstream if value == source else renamed.get(value, value)

    smap = _copy_map(doc.source_map)
    _drop(smap, where)
    new_nodes: dict[str, Any] = {}
    for key, value in doc.data["nodes"].items():
        if key != name:
            if isinstance(value, dict) and "input" in value:
                value = {**value, "input": _reading(value["input"], name, renamed[output])}
            new_nodes[key] = value
            continue
        for sub_name, sub_node in sub_data["nodes"].items():
            if sub_name in (source, sink):
                continue
            if "input" in sub_node:
                sub_node = {**sub_node, "input": rename(sub_node["input"])}
            new_nodes[renamed[sub_name]] = sub_node
            _copy(sub_doc.source_map, smap, ("nodes", sub_name), ("nodes", renamed[sub_name]))
    new_data = {**doc.data, "nodes": new_nodes}
    warnings = list(current.warnings) + list(sub.warnings)
    new_data["params"] = _params(doc, name, node, spec, smap)
    providers = dict(doc.data.get("providers") or {})
    for provider, settings in (sub_data.get("providers") or {}).items():
        if provider not in providers:
            providers[provider] = settings
            _copy(sub_doc.source_map, smap, ("providers", provider), ("providers", provider))
    if providers:
        new_data["providers"] = providers
    for key in _RUN_WIDE:
        if key in sub_data and sub_data[key] != doc.data.get(key):
            span = sub_doc.source_map.locate((key,))
            warnings.append(
                Diagnostic(
                    sub_doc.file_of(span),
                    span.line,
                    span.col,
                    f"`{key}` of sub-pipeline {ref!r} does not apply inside node '{name}': a run has its "
                    f"root file's `{key}`",
                    severity="warning",
                    code="compose",
                    json_path=key,
                    hint=f"set it in the root file ({doc.path})",
                )
            )
    groups = {**current.groups, name: ref, **{f"{name}.{k}": v for k, v in sub.groups.items()}}
    return Inlined(Document(doc.path, new_data, smap, doc.format), warnings, groups)


def _check_node(doc: Document, name: str, node: dict[str, Any]) -> None:
    """The node's own fields against its op's model (it is replaced before the pipeline is validated,
    so a misspelt field would otherwise be dropped without a word)."""
    model = ops().get("pipeline")
    if model is None:
        return
    try:
        model.model_validate(node, strict=True)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where: JsonPath = ("nodes", name, *error["loc"])
            span = doc.source_map.locate(where, prefer="key")
            message = f"node '{name}': {error['msg']}"
            problems.append(
                Diagnostic(doc.file_of(span), span.line, span.col, message, json_path=format_path(where))
            )
        raise ConfigError(problems) from None


def _reading(value: Any, name: str, output: str) -> Any:
    if isinstance(value, list):
        return [output if v == name else v for v in value]
    return output if value == name else value


def _params(doc: Document, name: str, node: dict[str, Any], spec: Any, smap: SourceMap) -> dict[str, Any]:
    """The parent's params with the sub-pipeline's (overridden by the node's) joined in."""
    own = dict(doc.data.get("params") or {})
    given = node.get("params") or {}
    if not isinstance(given, dict):
        raise _error(doc, ("nodes", name, "params"), f"node '{name}': `params` is a mapping")
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise _error(
            doc,
            ("nodes", name, "params", unknown[0]),
            f"node '{name}': its sub-pipeline has no param {unknown[0]!r} (it has "
            f"{', '.join(sorted(spec.params)) or 'none'})",
        )
    for key, value in {**spec.params, **given}.items():
        if key in own and own[key] != value:
            raise _error(
                doc,
                ("nodes", name, "params", key) if key in given else ("params", key),
                f"node '{name}': param {key!r} is {value!r} in the sub-pipeline and {own[key]!r} here; "
                "templates read one `params` per run",
                "give the param the same value in both, or another name in one of the files",
            )
        own[key] = value
    return own


def _resolve(doc: Document, ref: str) -> str:
    return ref if os.path.isabs(ref) else os.path.join(_base_dir(doc), ref)


def _base_dir(doc: Document) -> str:
    if doc.path in ("-", "<stdin>"):
        return os.getcwd()
    return os.path.dirname(os.path.abspath(doc.path))


def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _copy_map(smap: SourceMap) -> SourceMap:
    return SourceMap(smap.path, dict(smap.keys), dict(smap.values), dict(smap.origins))


def _drop(smap: SourceMap, where: JsonPath) -> None:
    n = len(where)
    for spans in (smap.keys, smap.values):
        for k in [k for k in spans if tuple(k[:n]) == tuple(where)]:
            del spans[k]


def _copy(source: SourceMap, target: SourceMap, src: JsonPath, dst: JsonPath) -> None:
    n = len(src)
    for spans, dest in ((source.keys, target.keys), (source.values, target.values)):
        for k, span in spans.items():
            if tuple(k[:n]) == tuple(src):
                dest[tuple(dst) + tuple(k[n:])] = Span(span.line, span.col, span.path or source.path)
