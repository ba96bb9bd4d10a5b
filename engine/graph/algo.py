"""The superstep rules as pure functions: what a node's return value writes, how a step's writes are
applied, and which tasks the next step runs. No I/O, no clock, no event loop (the runner does those).

A run is a sequence of **supersteps** (Pregel/BSP, as LangGraph defines them):

1. the step's tasks run concurrently, each on the state as it was when the step began;
2. their writes are applied together, in a deterministic order — plain tasks by node name, then
   ``Send`` tasks in the order they were sent (LangGraph's order) — whatever order they finished in;
   two writes to a field without a reducer in one step raise :class:`InvalidUpdate`;
3. the next step's tasks are the nodes the finished ones lead to: static edges, conditional routes
   (each evaluated on the state before the step plus its own node's writes, LangGraph's fresh read),
   ``Command.goto``, ``Send``s, and joins whose sources have all finished (over any number of steps).
   A node triggered by several sources in one step runs once; ``Send`` tasks each run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from engine.graph.builder import Command, GraphPlan, Route, Send
from engine.graph.errors import GraphError, InvalidUpdate
from engine.graph.tasks import Task
from engine.spec.models import END, START

Goto = str | Send


@dataclass
class Outcome:
    """What one task of a superstep produced: validated writes (groups of distinct keys, applied in
    order) and where it asked to go."""

    task: Task
    writes: list[dict[str, Any]]
    gotos: list[Goto] = field(default_factory=list)
    error: dict[str, str] | None = None
    """Set when the node failed and its ``on_error`` node takes over (the writes hold ``error_key``)."""
    seconds: float = 0.0
    kept: bool = False
    """Already recorded as a pending write (``__write__``)."""


# -- what a node writes ---------------------------------------------------------------------------


def writes_of(plan: GraphPlan[Any], node: str, result: Any) -> tuple[list[dict[str, Any]], list[Goto]]:
    """A node's return value as validated write groups and gotos.

    Accepted: ``None``, a mapping, a model instance (its fields, as LangGraph reads one), a
    :class:`Command` (``update`` a mapping, a model or a list of ``(key, value)`` pairs) or a list of
    ``Command``s. Pairs may repeat a key (a field with a reducer then receives each value in turn).
    """
    if result is None:
        return [], []
    if type(result) is dict or isinstance(result, Mapping):  # the common case first
        return ([plan.schema.validate(node, result)] if result else []), []
    gotos: list[Goto] = []
    items: Sequence[Any]
    if isinstance(result, Command):
        items = [result]
    elif isinstance(result, (list, tuple)) and any(isinstance(r, Command) for r in result):
        items = result  # Commands and plain updates, applied in order
    else:
        items = [result]
    groups: list[dict[str, Any]] = []
    for item in items:
        update: Any = item
        if isinstance(item, Command):
            goto = item.goto
            gotos.extend([goto] if isinstance(goto, (str, Send)) else goto)
            update = item.update
            if update is None:
                continue
            if isinstance(update, (list, tuple)):
                groups.extend(_pair_groups(plan, node, update))
                continue
        if isinstance(update, BaseModel):
            update = _model_fields(plan, update)
        if not isinstance(update, Mapping):
            raise InvalidUpdate(
                f"node {node!r} returned {type(update).__name__}; return a dict of state updates, a "
                "state model instance, a Command (or a list of them), or None",
                node=node,
                key="",
            )
        if update:
            groups.append(plan.schema.validate(node, update))
    return groups, gotos


def _model_fields(plan: GraphPlan[Any], model: BaseModel) -> dict[str, Any]:
    # as LangGraph's get_update_as_tuples: every field of the state that the instance has, except a
    # None the field's default does not explain
    known = plan.schema.fields
    info = type(model).model_fields
    kept = model.model_fields_set
    out: dict[str, Any] = {}
    for key, value in model.__dict__.items():
        if key not in known:
            continue
        if value is not None or key in kept or (key in info and info[key].default is not None):
            out[key] = value
    return out


def _pair_groups(plan: GraphPlan[Any], node: str, pairs: Sequence[Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise InvalidUpdate(
                f"node {node!r} returned Command(update=[...]) with {pair!r}; each item must be a "
                "(key, value) pair",
                node=node,
                key="",
            )
        key, value = pair
        if key in current:  # a repeated key starts a new group: groups apply in order
            groups.append(current)
            current = {}
        current[key] = value
    if current:
        groups.append(current)
    return [plan.schema.validate(node, g) for g in groups]


# -- applying a step ------------------------------------------------------------------------------


def ordered(tasks: list[Task]) -> list[Task]:
    """A superstep's tasks in LangGraph's order: plain tasks by node name, then ``Send`` tasks."""
    if len(tasks) < 2:
        return tasks
    pulls = sorted((t for t in tasks if t.arg is None), key=lambda t: t.node)
    return [*pulls, *(t for t in tasks if t.arg is not None)]


def apply(plan: GraphPlan[Any], values: dict[str, Any], outcomes: Sequence[Outcome], step: int) -> None:
    """Apply a step's writes to ``values`` in place, in the outcomes' order (see :func:`ordered`).

    Raises :class:`InvalidUpdate` naming the key and the nodes when a field without a reducer receives
    more than one value in the step.
    """
    fields = plan.schema.fields
    if len(outcomes) > 1 or (outcomes and len(outcomes[0].writes) > 1):
        writers: dict[str, list[str]] = {}
        for o in outcomes:
            for group in o.writes:
                for key in group:
                    if fields[key].reducer is None:
                        writers.setdefault(key, []).append(o.task.node)
        for key, nodes in writers.items():
            if len(nodes) > 1:
                who = " and ".join(repr(n) for n in nodes)
                raise InvalidUpdate(
                    f"At key {key!r}: can receive only one value per step, but nodes {who} wrote it in "
                    f"step {step}; give the field a reducer (Annotated[..., operator.add] or a named "
                    "one) to combine them, or write it from one node",
                    node=nodes[-1],
                    key=key,
                )
    for o in outcomes:
        for group in o.writes:
            plan.schema.merge(values, group)


# -- the next step --------------------------------------------------------------------------------


def first_tasks(plan: GraphPlan[Any], values: Mapping[str, Any]) -> list[Task]:
    """The tasks START leads to (a fresh run's, or a continued thread's, first step)."""
    pulls: set[str] = set(plan.edges.get(START, ()))
    pushes: list[Task] = []
    gotos: list[Goto] = []
    for route in plan.routes.get(START, ()):
        gotos.extend(route_targets(plan, START, route, values))
    _take(plan, START, gotos, pulls, pushes)
    return ordered([*(Task(n) for n in pulls), *pushes])


def next_tasks(
    plan: GraphPlan[Any],
    before: Mapping[str, Any] | None,
    values: Mapping[str, Any],
    outcomes: Sequence[Outcome],
    join_seen: dict[int, set[str]],
) -> list[Task]:
    """The tasks of the step after ``outcomes`` (``join_seen`` is updated in place).

    ``before`` is the state when the step began (needed for routes when the step ran several tasks;
    ``None`` means the step had one task, whose fresh read is ``values`` itself).
    """
    if len(outcomes) == 1:
        o = outcomes[0]
        node = o.task.node
        if o.error is None and not o.gotos and node not in plan.routes and node not in plan.joins_of:
            targets = plan.edges.get(node, ())  # a plain edge's step: no set, no sort
            if len(targets) < 2:
                return [Task(t) for t in targets]
    pulls: set[str] = set()
    pushes: list[Task] = []
    for o in outcomes:
        node = o.task.node
        if o.error is not None:
            failed = plan.nodes[node]
            assert failed.on_error is not None
            pulls.add(failed.on_error)
            continue
        pulls.update(plan.edges.get(node, ()))
        gotos = list(o.gotos)
        routes = plan.routes.get(node, ())
        if routes:
            fresh = values if before is None else _fresh(plan, before, o)
            for route in routes:
                gotos.extend(route_targets(plan, node, route, fresh))
        _take(plan, node, gotos, pulls, pushes)
        for i in plan.joins_of.get(node, ()):
            seen = join_seen.setdefault(i, set())
            seen.add(node)
            sources, target = plan.joins[i]
            if seen >= sources:
                seen.clear()
                if target != END:
                    pulls.add(target)
    return ordered([*(Task(n) for n in pulls), *pushes])


def _fresh(plan: GraphPlan[Any], before: Mapping[str, Any], o: Outcome) -> dict[str, Any]:
    fresh = dict(before)
    for group in o.writes:
        plan.schema.merge(fresh, group)
    return fresh


def route_targets(plan: GraphPlan[Any], source: str, route: Route, values: Mapping[str, Any]) -> list[Goto]:
    """Where a conditional route sends the run from ``source`` (names, END, ``Send``s)."""
    chosen = route.fn(plan.schema.snapshot(values))
    items = chosen if isinstance(chosen, (list, tuple)) else [chosen]
    if route.path_map is not None:
        try:
            items = [i if isinstance(i, Send) else route.path_map[i] for i in items]
        except KeyError as exc:
            raise GraphError(
                f"conditional edge from {source!r} returned {exc.args[0]!r}, not in its path_map"
            ) from None
    return [i for i in items if i is not None]


def _take(
    plan: GraphPlan[Any], source: str, gotos: Sequence[Goto], pulls: set[str], pushes: list[Task]
) -> None:
    nodes = plan.nodes
    for g in gotos:
        if isinstance(g, Send):
            if g.node == END:
                continue
            if g.node not in nodes:
                raise GraphError(f"node {source!r} sent to unknown node {g.node!r}")
            who = f"Send({g.node!r}, ...) from {source!r} carries"
            pushes.append(Task(g.node, arg=plan.schema.validate(g.node, g.arg, source=who)))
        elif g == END:
            continue
        elif isinstance(g, str) and g in nodes:
            pulls.add(g)
        else:
            raise GraphError(
                f"the way out of node {source!r} names {g!r}, which is not a node; "
                f"return one of {', '.join(nodes)}, END or Send objects"
            )


# -- pending writes as JSON -----------------------------------------------------------------------


def outcome_to_json(plan: GraphPlan[Any], o: Outcome) -> dict[str, Any]:
    """A finished task's writes, kept in a ``__write__`` record until its step commits."""
    gotos: list[Any] = [
        {"send": g.node, "arg": plan.schema.dump(plan.schema.validate(g.node, g.arg))}
        if isinstance(g, Send)
        else g
        for g in o.gotos
    ]
    out: dict[str, Any] = {
        "task": o.task.id,
        "node": o.task.node,
        "writes": [plan.schema.dump(g) for g in o.writes],
    }
    if gotos:
        out["goto"] = gotos
    if o.error is not None:
        out["error"] = o.error
    return out


def outcome_from_json(plan: GraphPlan[Any], task: Task, data: Mapping[str, Any]) -> Outcome:
    """The inverse of :func:`outcome_to_json` for ``task``."""
    gotos: list[Goto] = [
        Send(g["send"], plan.schema.load(g["send"], g["arg"])) if isinstance(g, dict) else g
        for g in data.get("goto", [])
    ]
    writes = [plan.schema.load(task.node, w) for w in data.get("writes", [])]
    return Outcome(task, writes, gotos, data.get("error"))
