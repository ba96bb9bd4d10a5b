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
    """Run another pipeline file as one node. In a state graph (no `input`): a state graph whose state is
    filled from this graph's state, that runs to its end, and whose final state updates this one. In a
    dataflow (with `input`): a dataflow file with one source and one sink, inlined in this pipeline's
    plan as nodes `NODE.SUBNODE`, its source replaced by `input`, its sink's input being this node's
    output."""

    op: Literal["pipeline"] = Field(description="Run another pipeline file as one node.")
    path: str = Field(
        min_length=1,
        description="The pipeline file, relative to this file: a state graph, or with `input` a dataflow; "
        "`validate` checks it too.",
    )
    input: str | None = Field(
        None,
        description="In a dataflow: the node whose rows the sub-pipeline's one source is replaced by. The "
        "file (a dataflow with one source and one sink) is inlined, its nodes named `NODE.SUBNODE`, and "
        "this node's output is what its sink reads.",
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
