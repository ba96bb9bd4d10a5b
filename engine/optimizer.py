"""Optimizer: fuse each chain source -> per-batch transforms -> sink into one stage.

Fusion is the main lever measured on small clusters: one task that reads a split, transforms it and
writes its own part, returning only metadata, beat every pattern that moved batches between stages.
A barrier op (global limit, dedupe, aggregate) ends a fused segment: batches cross it through the
object store, and the per-batch ops after it are fused into the tasks that follow it. A pooled op (an
LLM call) fuses like a per-batch one: the task hands each batch to the node's actor pool and waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.plan import Plan, PlanNode, Problem
from engine.spec.models import Resources


@dataclass(frozen=True)
class Barrier:
    """A barrier op and the per-batch transforms fused after it."""

    node: PlanNode
    transforms: tuple[PlanNode, ...]


@dataclass(frozen=True)
class Stage:
    """A chain from one source to one sink: a fused head (one task per split), then any barriers."""

    source: PlanNode
    transforms: tuple[PlanNode, ...]
    sink: PlanNode
    resources: Resources
    barriers: tuple[Barrier, ...] = ()

    @property
    def nodes(self) -> tuple[PlanNode, ...]:
        """Every node of the stage, source first."""
        tail = [n for b in self.barriers for n in (b.node, *b.transforms)]
        return (self.source, *self.transforms, *tail, self.sink)


def optimize(plan: Plan) -> tuple[list[Stage], list[Problem]]:
    """The stages of a dataflow plan, or the problems that keep a node from running."""
    stages: list[Stage] = []
    problems: list[Problem] = []
    for sink in plan.nodes.values():
        if sink.kind != "sink":
            continue
        chain: list[PlanNode] = []
        node = sink
        ok = True
        while node.kind != "source":
            if len(node.inputs) != 1:
                problems.append(
                    Problem(
                        ("nodes", node.id, "input"),
                        f"node '{node.id}' reads several inputs; joining streams cannot run in this version",
                        code="not_executable",
                    )
                )
                ok = False
                break
            node = plan.nodes[node.inputs[0]]
            if node.kind == "transform":
                if not (node.spec.per_batch or node.spec.pooled or node.spec.barrier):
                    problems.append(
                        Problem(
                            ("nodes", node.id, "op"),
                            f"op '{node.op}' (node '{node.id}') cannot run in this version of headrace",
                            "it validates, and runs once its runtime lands",
                            code="not_executable",
                        )
                    )
                    ok = False
                    break
                chain.append(node)
        if ok:
            head, barriers = _segments(list(reversed(chain)))
            nodes = (node, *head, *[n for b in barriers for n in (b.node, *b.transforms)], sink)
            stages.append(Stage(node, head, sink, _combined(nodes), barriers))
    state_nodes = [n for n in plan.nodes.values() if n.kind == "state"]
    if state_nodes and len(state_nodes) == len(plan.nodes):
        # a pure state graph runs with engine.runtime.graphs (dispatched before optimize), not as stages
        problems.append(
            Problem(
                ("nodes",),
                "this pipeline is a state graph: it has no dataflow stages to plan",
                "run it with `headrace run PATH --input JSON`",
                code="not_executable",
                at="key",
            )
        )
        return stages, problems
    for node in state_nodes:
        problems.append(
            Problem(
                ("nodes", node.id, "op"),
                f"state node '{node.id}' is in a pipeline with dataflow nodes; a pipeline is either a "
                "dataflow or a state graph in this version of headrace",
                code="not_executable",
            )
        )
    if not stages and not problems:
        problems.append(
            Problem(
                ("nodes",),
                "the pipeline has no sink, so a run would produce nothing",
                "add a write_* node",
                code="no_sink",
                at="key",
            )
        )
    return stages, problems


def _segments(chain: list[PlanNode]) -> tuple[tuple[PlanNode, ...], tuple[Barrier, ...]]:
    """Split a source-to-sink chain of transforms at its barriers."""
    head: list[PlanNode] = []
    barriers: list[tuple[PlanNode, list[PlanNode]]] = []
    for node in chain:
        if node.spec.barrier:
            barriers.append((node, []))
        elif barriers:
            barriers[-1][1].append(node)
        else:
            head.append(node)
    return tuple(head), tuple(Barrier(b, tuple(t)) for b, t in barriers)


def _combined(nodes: tuple[PlanNode, ...]) -> Resources:
    """One task runs every node of the stage, so it needs the most any of them asks for."""
    # a pooled node's resources are its actors', not the task's: the task only waits for them
    combined = Resources()
    for node in nodes:
        if not node.spec.pooled:
            combined = combined.combine(node.resources)
    return combined
