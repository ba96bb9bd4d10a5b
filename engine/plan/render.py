"""Render a plan as Mermaid or Graphviz DOT text: data inputs as solid arrows, state edges dashed."""

from __future__ import annotations

import re
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


def render(plan: Plan, fmt: GraphFormat) -> str:
    """The plan's graph as text in ``fmt``."""
    return _mermaid(plan) if fmt == "mermaid" else _dot(plan)


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


def _mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    for node in plan.nodes.values():
        left, right = _SHAPES[node.kind]
        lines.append(f'    {_ident(node.id)}{left}"{node.id}<br/>{node.op}"{right}')
    for node in plan.nodes.values():
        lines.extend(f"    {_ident(src)} --> {_ident(node.id)}" for src in node.inputs)
    for src, dst, label in _state_edges(plan):
        text = label.replace('"', "'").replace("|", "/")
        arrow = f' -. "{text}" .-> ' if text else " -.-> "
        lines.append(f"    {_mermaid_end(src)}{arrow}{_mermaid_end(dst)}")
    return "\n".join(lines) + "\n"


def _mermaid_end(name: str) -> str:
    if name == START:
        return "START((start))"
    if name == END:
        return "END((end))"
    return _ident(name)


def _dot(plan: Plan) -> str:
    shapes = {"source": "cylinder", "sink": "folder", "state": "ellipse", "transform": "box"}
    lines = [f'digraph "{plan.name}" {{', "    rankdir=LR;"]
    for node in plan.nodes.values():
        lines.append(f'    "{node.id}" [shape={shapes[node.kind]}, label="{node.id}\\n{node.op}"];')
    for node in plan.nodes.values():
        lines.extend(f'    "{src}" -> "{node.id}";' for src in node.inputs)
    for src, dst, label in _state_edges(plan):
        attrs = ', label="' + label.replace('"', '\\"') + '"' if label else ""
        lines.append(f'    "{src}" -> "{dst}" [style=dashed{attrs}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
