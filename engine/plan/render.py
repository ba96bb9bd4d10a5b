"""Render a plan as Mermaid or Graphviz DOT text: data inputs as solid arrows, state edges dashed.

A ``pipeline`` node's own plan, when given (``clusters``), is drawn inside it as a cluster (Mermaid
``subgraph``, DOT ``cluster_``), its nodes named ``NODE/SUBNODE``, nested to any depth.
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


def render(plan: Plan, fmt: GraphFormat, clusters: Mapping[str, Cluster] | None = None) -> str:
    """The plan's graph as text in ``fmt`` (``clusters``: node id -> the sub-pipeline it runs)."""
    if fmt == "mermaid":
        return "\n".join(["flowchart LR", *_mermaid(plan, clusters or {}, "", "    ")]) + "\n"
    lines = [f'digraph "{plan.name}" {{', "    rankdir=LR;", *_dot(plan, clusters or {}, "", "    "), "}"]
    return "\n".join(lines) + "\n"


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


def _mermaid(plan: Plan, clusters: Mapping[str, Cluster], prefix: str, pad: str) -> list[str]:
    lines = []
    for node in plan.nodes.values():
        ident = _ident(prefix + node.id)
        cluster = clusters.get(node.id)
        if cluster is not None:
            title = f"{node.id}: {node.op} {cluster.label}".replace('"', "'")
            lines.append(f'{pad}subgraph {ident} ["{title}"]')
            lines += _mermaid(cluster.plan, cluster.clusters, f"{prefix}{node.id}/", pad + "    ")
            lines.append(f"{pad}end")
        else:
            left, right = _SHAPES[node.kind]
            lines.append(f'{pad}{ident}{left}"{node.id}<br/>{node.op}"{right}')
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


def _dot(plan: Plan, clusters: Mapping[str, Cluster], prefix: str, pad: str) -> list[str]:
    lines = []
    for node in plan.nodes.values():
        line = f'"{prefix}{node.id}" [shape={_DOT_SHAPES[node.kind]}, label="{node.id}\\n{node.op}"];'
        cluster = clusters.get(node.id)
        if cluster is None:
            lines.append(pad + line)
            continue
        label = f"{node.id}: {node.op} {cluster.label}".replace('"', '\\"')
        lines += [
            f'{pad}subgraph "cluster_{prefix}{node.id}" {{',
            f'{pad}    label="{label}";',
            pad + "    " + line,
        ]
        lines += _dot(cluster.plan, cluster.clusters, f"{prefix}{node.id}/", pad + "    ")
        lines.append(pad + "}")
    for node in plan.nodes.values():
        lines.extend(f'{pad}"{prefix}{src}" -> "{prefix}{node.id}";' for src in node.inputs)
    for src, dst, label in _state_edges(plan):
        attrs = ', label="' + label.replace('"', '\\"') + '"' if label else ""
        lines.append(f'{pad}"{prefix}{src}" -> "{prefix}{dst}" [style=dashed{attrs}];')
    return lines
