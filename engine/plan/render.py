"""Render a plan as Mermaid or Graphviz DOT text: data inputs as solid arrows, state edges dashed.

A ``pipeline`` node's own plan, when given (``clusters``), is drawn inside it as a cluster (Mermaid
``subgraph``, DOT ``cluster_``), its nodes named ``NODE/SUBNODE``, nested to any depth. A dataflow's
inlined sub-pipelines (``groups``: node name prefix -> file) are drawn the same way around their
``PREFIX.SUBNODE`` nodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from engine.plan.ir import Plan
from engine.spec.models import END, START

GraphFormat = Literal["mermaid", "dot"]

_SHAPES = {
    "source": ("[(", ")]"),
    "sink": ("[/", "/]"),
    "state": ("([", "])"),
    "transform": ("[", "]"),
}
_DOT_SHAPES = {"source": "cylinder", "sink": "folder", "state": "ellipse", "transform": "box"}


@dataclass(frozen=True)
class Cluster:
    """The plan a ``pipeline`` node runs, with a label (its file) and its own nodes' clusters."""

    label: str
    plan: Plan
    clusters: Mapping[str, Cluster] = field(default_factory=dict)


def render(
    plan: Plan,
    fmt: GraphFormat,
    clusters: Mapping[str, Cluster] | None = None,
    groups: Mapping[str, str] | None = None,
) -> str:
    """The plan's graph as text in ``fmt`` (``clusters``: node id -> the sub-pipeline it runs;
    ``groups``: inlined sub-pipelines, node name prefix -> file)."""
    if fmt == "mermaid":
        return "\n".join(["flowchart LR", *_mermaid(plan, clusters or {}, "", "    ", groups or {})]) + "\n"
    body = _dot(plan, clusters or {}, "", "    ", groups or {})
    lines = [f'digraph "{plan.name}" {{', "    rankdir=LR;", *body, "}"]
    return "\n".join(lines) + "\n"


def _owner(name: str, groups: Mapping[str, str]) -> str | None:
    """The innermost group ``name`` (a node or a group) is drawn in."""
    owners = [g for g in groups if name.startswith(g + ".")]
    return max(owners, key=len) if owners else None


def _grouped(
    blocks: list[tuple[str, list[str]]],
    groups: Mapping[str, str],
    pad: str,
    fmt: GraphFormat,
    group: str | None = None,
) -> list[str]:
    """Each node's lines (``blocks``, written at ``pad``), the ones of a group inside its subgraph."""
    inner = "" if group is None else "    "
    out = [inner + line for node_id, lines in blocks if _owner(node_id, groups) == group for line in lines]
    for g in sorted(groups):
        if _owner(g, groups) != group:
            continue
        title = f"{g}: pipeline {groups[g]}"
        if fmt == "mermaid":
            out.append(f'{inner}{pad}subgraph {_ident("group_" + g)} ["{title.replace(chr(34), chr(39))}"]')
        else:
            out += [f'{inner}{pad}subgraph "cluster_{g}" {{', f'{inner}{pad}    label="{_dot_text(title)}";']
        out += [inner + line for line in _grouped(blocks, groups, pad, fmt, g)]
        out.append(f"{inner}{pad}end" if fmt == "mermaid" else f"{inner}{pad}}}")
    return out


def _dot_text(text: str) -> str:
    return text.replace('"', '\\"')


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _state_edges(plan: Plan) -> list[tuple[str, str, str]]:
    out = []
    for edge in plan.edges:
        if edge.branches is not None:
            for branch in edge.branches:
                out.append((edge.from_, branch.to, branch.when or "otherwise"))
        else:
            out.extend((edge.from_, target, "") for target in edge.targets())
    return out


def _mermaid(
    plan: Plan,
    clusters: Mapping[str, Cluster],
    prefix: str,
    pad: str,
    groups: Mapping[str, str] | None = None,
) -> list[str]:
    blocks: list[tuple[str, list[str]]] = []
    for node in plan.nodes.values():
        ident = _ident(prefix + node.id)
        cluster = clusters.get(node.id)
        if cluster is not None:
            title = f"{node.id}: {node.op} {cluster.label}".replace('"', "'")
            block = [f'{pad}subgraph {ident} ["{title}"]']
            block += _mermaid(cluster.plan, cluster.clusters, f"{prefix}{node.id}/", pad + "    ")
            block.append(f"{pad}end")
        else:
            left, right = _SHAPES[node.kind]
            block = [f'{pad}{ident}{left}"{node.id}<br/>{node.op}"{right}']
        blocks.append((node.id, block))
    lines = _grouped(blocks, groups or {}, pad, "mermaid")
    for node in plan.nodes.values():
        lines.extend(f"{pad}{_ident(prefix + src)} --> {_ident(prefix + node.id)}" for src in node.inputs)
    for src, dst, label in _state_edges(plan):
        text = label.replace('"', "'").replace("|", "/")
        arrow = f' -. "{text}" .-> ' if text else " -.-> "
        lines.append(f"{pad}{_mermaid_end(src, prefix)}{arrow}{_mermaid_end(dst, prefix)}")
    return lines


def _mermaid_end(name: str, prefix: str) -> str:
    if name == START:
        return f"{_ident(prefix)}START((start))"
    if name == END:
        return f"{_ident(prefix)}END((end))"
    return _ident(prefix + name)


def _dot(
    plan: Plan,
    clusters: Mapping[str, Cluster],
    prefix: str,
    pad: str,
    groups: Mapping[str, str] | None = None,
) -> list[str]:
    blocks: list[tuple[str, list[str]]] = []
    for node in plan.nodes.values():
        line = f'"{prefix}{node.id}" [shape={_DOT_SHAPES[node.kind]}, label="{node.id}\\n{node.op}"];'
        cluster = clusters.get(node.id)
        if cluster is None:
            blocks.append((node.id, [pad + line]))
            continue
        label = _dot_text(f"{node.id}: {node.op} {cluster.label}")
        block = [
            f'{pad}subgraph "cluster_{prefix}{node.id}" {{',
            f'{pad}    label="{label}";',
            pad + "    " + line,
        ]
        block += _dot(cluster.plan, cluster.clusters, f"{prefix}{node.id}/", pad + "    ")
        block.append(pad + "}")
        blocks.append((node.id, block))
    lines = _grouped(blocks, groups or {}, pad, "dot")
    for node in plan.nodes.values():
        lines.extend(f'{pad}"{prefix}{src}" -> "{prefix}{node.id}";' for src in node.inputs)
    for src, dst, label in _state_edges(plan):
        attrs = ', label="' + label.replace('"', '\\"') + '"' if label else ""
        lines.append(f'{pad}"{prefix}{src}" -> "{prefix}{dst}" [style=dashed{attrs}];')
    return lines
