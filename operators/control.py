"""State-graph nodes: Python functions named by import path that read the state and return an update,
and whole pipeline files run as one node."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from engine.spec.models import ImportPath, StateNodeSpec
from engine.spec.registry import register_op


@register_op
class Call(StateNodeSpec):
    """Call `fn(state, **kwargs)`; it returns a partial update of the state."""

    op: Literal["call"] = Field(description="Call a Python function on the state.")
    fn: ImportPath = Field(
        description="The function as an import path, `package.module:function`.",
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments passed to the function."
    )


@register_op(graph="engine.graph.subpipeline:pipeline_node")
class SubPipeline(StateNodeSpec):
    """Run another pipeline file (a state graph) as one node: its state is filled from this graph's
    state, it runs to its end, and its final state updates this one."""

    op: Literal["pipeline"] = Field(description="Run another pipeline file as one node.")
    path: str = Field(
        min_length=1,
        description="The pipeline file (a state graph), relative to this file; `validate` checks it too.",
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict, description="Overrides of the sub-pipeline's `params`."
    )
    in_fields: dict[str, str] | None = Field(
        None,
        description="The sub-pipeline's input: its state field -> this graph's state field it is taken "
        "from. Default: every field both states declare.",
    )
    out_fields: dict[str, str] | None = Field(
        None,
        description="The node's update: this graph's state field -> the sub-pipeline's field whose "
        "final value it gets (through this field's reducer). Default: every field both states declare.",
    )
