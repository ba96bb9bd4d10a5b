"""State-graph nodes: Python functions named by import path that read the state and return an update."""

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
