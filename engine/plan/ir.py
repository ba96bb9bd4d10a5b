"""The plan: an immutable IR of nodes, data inputs, state edges and effective resources."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NewType

from engine.spec.models import Columns, Edge, ErrorPolicy, NodeSpec, OpKind, Resources, RetryPolicy

NodeId = NewType("NodeId", str)


@dataclass(frozen=True)
class PlanNode:
    """One node with everything resolved: inputs by id, inherited defaults applied."""

    id: NodeId
    op: str
    kind: OpKind
    spec: NodeSpec
    inputs: tuple[NodeId, ...]
    resources: Resources
    retry: RetryPolicy
    on_error: ErrorPolicy
    columns: Columns | None


@dataclass(frozen=True)
class Plan:
    """A validated pipeline graph. Rewrites (the optimizer) return a new Plan."""

    name: str
    spec_hash: str
    nodes: Mapping[NodeId, PlanNode]
    edges: tuple[Edge, ...]
    max_steps: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", MappingProxyType(dict(self.nodes)))

    def consumers(self, node: NodeId) -> tuple[NodeId, ...]:
        """Nodes that read ``node``'s data."""
        return tuple(n.id for n in self.nodes.values() if node in n.inputs)

    def topological(self) -> Iterator[PlanNode]:
        """Data nodes in an order where each comes after its inputs (state nodes last, by name)."""
        done: set[NodeId] = set()
        pending = list(self.nodes.values())
        while pending:
            ready = [n for n in pending if all(i in done for i in n.inputs)]
            if not ready:  # cycles are refused when the plan is built
                raise ValueError("the plan has a data cycle")
            for node in ready:
                done.add(node.id)
                yield node
            pending = [n for n in pending if n.id not in done]
