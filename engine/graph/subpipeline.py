"""The ``pipeline`` op in a state graph: another pipeline file run as one node.

The node loads and compiles the sub-pipeline once, when the graph is built (so a broken file fails the
build, located in that file), and on each visit runs it to its end on an input taken from this graph's
state (``in_fields``: sub field -> this field; default every field both states declare), then returns its
final values as this node's update (``out_fields``: this field -> sub field; same default), which this
graph's reducers merge. ``params`` override the sub-pipeline's. The sub-run is in memory: this graph's
checkpoints hold the node's update, so a resumed parent re-runs an unfinished sub-pipeline whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from engine.graph.errors import InvalidGraph

__all__ = ["pipeline_node", "resolve_subpipeline"]


def resolve_subpipeline(path: str, base_dir: str | None) -> str:
    """The file a ``pipeline`` node's ``path`` names, relative to its pipeline's folder."""
    return path if os.path.isabs(path) else os.path.join(base_dir or os.getcwd(), path)


def pipeline_node(name: str, spec: Any, base_dir: str | None) -> Callable[[Any], Any]:
    """The node function of ``pipeline`` node ``name`` (``spec``: its ``SubPipeline`` model)."""
    from engine.errors import ConfigError
    from engine.graph.spec import graph_from_spec, recursion_limit_of
    from engine.spec.loader import load_pipeline

    path = resolve_subpipeline(spec.path, base_dir)
    try:
        sub = load_pipeline(path).spec
    except ConfigError as exc:
        raise InvalidGraph(f"node {name!r}: sub-pipeline {spec.path}: {exc}") from None
    if spec.params:
        sub = sub.model_copy(update={"params": {**sub.params, **spec.params}})
    app = graph_from_spec(sub, base_dir=os.path.dirname(os.path.abspath(path))).compile()
    limit = recursion_limit_of(sub)
    sub_fields = set((sub.state.fields if sub.state else {}).keys())

    async def node(state: Any) -> dict[str, Any]:
        mine = set(type(state).model_fields)
        inputs: Mapping[str, str] = (
            spec.in_fields if spec.in_fields is not None else {f: f for f in mine & sub_fields}
        )
        outputs: Mapping[str, str] = (
            spec.out_fields if spec.out_fields is not None else {f: f for f in mine & sub_fields}
        )
        final = await app.ainvoke(
            {sub_field: getattr(state, field) for sub_field, field in inputs.items()},
            recursion_limit=limit,
        )
        return {field: getattr(final, sub_field) for field, sub_field in outputs.items()}

    return node
