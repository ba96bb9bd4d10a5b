"""Build a Plan from a validated Pipeline, checking what the models alone cannot.

Checks: references between nodes, data cycles (named: ``a -> b -> a``), state edges and their loops
(a loop needs ``max_steps``), reachability (warnings), edge conditions, and column contracts where
operators declare them. Problems carry a JSON path; the caller turns it into file:line:col.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from jinja2 import TemplateSyntaxError

from engine.plan.ir import NodeId, Plan, PlanNode
from engine.spec.expressions import condition_names, unsafe_reads
from engine.spec.models import END, START, Columns, ErrorPolicy, Pipeline, Resources, RetryPolicy

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A graph problem at a JSON path of the pipeline document."""

    where: JsonPath
    message: str
    hint: str = ""
    severity: Literal["error", "warning"] = "error"
    code: str = "graph"
    at: Literal["key", "value"] = "value"


class PlanProblems(Exception):
    """Raised by :func:`build_plan` when any problem is an error; carries all of them."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.message for p in problems))
        self.problems = problems


# Settings that decide how a run spends, not what it writes: a run stopped by its budget can be resumed
# with a larger one, and rate limits, prices or the cache location may change between attempts.
_OPERATIONAL = ("budget", "cache")
_OPERATIONAL_PROVIDER = ("rate_limits", "prices")
_OPERATIONAL_NODE = ("budget", "concurrency", "resources")


def spec_hash(pipeline: Pipeline) -> str:
    """A stable hash of what decides the pipeline's output (resume checks that it did not change).

    Budgets, rate limits, prices, the cache and resource settings are left out: they change how a run
    spends and schedules, never which rows it writes.
    """
    data = pipeline.model_dump(mode="json", by_alias=True)
    for key in _OPERATIONAL:
        data.pop(key, None)
    for settings in data.get("providers", {}).values():
        for key in _OPERATIONAL_PROVIDER:
            settings.pop(key, None)
    for node in data["nodes"].values():
        for key in _OPERATIONAL_NODE:
            node.pop(key, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_plan(pipeline: Pipeline) -> tuple[Plan, list[Problem]]:
    """The plan and its warnings; raises :class:`PlanProblems` when there are errors."""
    problems: list[Problem] = []
    names = set(pipeline.nodes)
    _check_inputs(pipeline, names, problems)
    _check_data_cycles(pipeline, problems)
    _check_state_edges(pipeline, names, problems)
    _check_reachability(pipeline, problems)
    columns = _check_columns(pipeline, problems) if not _has_errors(problems) else {}
    if _has_errors(problems):
        raise PlanProblems(problems)
    defaults = pipeline.defaults
    nodes = {
        NodeId(name): PlanNode(
            id=NodeId(name),
            op=spec.op,
            kind=spec.kind,
            spec=spec,
            inputs=tuple(NodeId(i) for i in spec.inputs()),
            resources=spec.resources or defaults.resources or Resources(),
            retry=spec.retry or defaults.retry or RetryPolicy(),
            on_error=spec.on_error or defaults.on_error or ErrorPolicy(),
            columns=columns.get(name),
        )
        for name, spec in pipeline.nodes.items()
    }
    plan = Plan(pipeline.name, spec_hash(pipeline), nodes, tuple(pipeline.edges), pipeline.max_steps)
    return plan, problems


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _did_you_mean(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _input_path(pipeline: Pipeline, node: str, index: int) -> JsonPath:
    spec_input = getattr(pipeline.nodes[node], "input", None)
    return ("nodes", node, "input", index) if isinstance(spec_input, list) else ("nodes", node, "input")


def _check_inputs(pipeline: Pipeline, names: set[str], problems: list[Problem]) -> None:
    for name, spec in pipeline.nodes.items():
        for i, ref in enumerate(spec.inputs()):
            where = _input_path(pipeline, name, i)
            if ref == name:
                problems.append(Problem(where, f"node '{name}' reads its own output"))
            elif ref not in names:
                hint = _did_you_mean(ref, names) or f"nodes are: {', '.join(sorted(names))}"
                problems.append(Problem(where, f"'{ref}' is not a node", hint, code="unknown_ref"))
            elif pipeline.nodes[ref].kind in ("sink", "state"):
                kind = pipeline.nodes[ref].kind
                problems.append(
                    Problem(
                        where,
                        f"'{ref}' is a {kind} node (op {pipeline.nodes[ref].op}) "
                        "and produces no data to read",
                        code="bad_ref",
                    )
                )


def _check_data_cycles(pipeline: Pipeline, problems: list[Problem]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for start in sorted(pipeline.nodes):
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(start, _known_inputs(pipeline, start))]
        state[start] = 1
        path.append(start)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                loop = [*path[path.index(nxt) :], nxt]
                # path follows inputs (consumer -> producer); print the data direction
                cycle = " -> ".join(reversed(loop))
                problems.append(
                    Problem(
                        ("nodes", nxt, "input"),
                        f"data cycle: {cycle}",
                        "data must flow one way; state loops belong in `edges`",
                        code="cycle",
                    )
                )
                return
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, _known_inputs(pipeline, nxt)))


def _known_inputs(pipeline: Pipeline, name: str) -> list[str]:
    return [i for i in pipeline.nodes[name].inputs() if i in pipeline.nodes and i != name]


def _check_state_edges(pipeline: Pipeline, names: set[str], problems: list[Problem]) -> None:
    state_nodes = {n for n, s in pipeline.nodes.items() if s.kind == "state"}
    graph: dict[str, list[str]] = {}
    fields = set(pipeline.state.fields) if pipeline.state else None
    for i, edge in enumerate(pipeline.edges):
        src = edge.from_
        if src == END:
            problems.append(Problem(("edges", i, "from"), "an edge cannot leave END"))
        elif src != START:
            _check_endpoint(pipeline, src, names, ("edges", i, "from"), problems)
        targets = edge.targets()
        for j, target in enumerate(targets):
            where: JsonPath = (
                ("edges", i, "branches", j, "to")
                if edge.branches is not None
                else ("edges", i, "to", j)
                if isinstance(edge.to, list)
                else ("edges", i, "to")
            )
            if target == START:
                problems.append(Problem(where, "an edge cannot lead to START"))
            elif target != END:
                _check_endpoint(pipeline, target, names, where, problems)
            graph.setdefault(src, []).append(target)
        for j, branch in enumerate(edge.branches or []):
            if branch.when is None:
                if j != len(edge.branches or []) - 1:
                    problems.append(
                        Problem(
                            ("edges", i, "branches", j),
                            "a branch without `when` must "
                            "come last: the branches after it could never be taken",
                        )
                    )
                continue
            _check_condition(branch.when, fields, ("edges", i, "branches", j, "when"), problems)
    if state_nodes and not pipeline.edges:
        problems.append(
            Problem(
                ("nodes",),
                "the pipeline has state nodes but no `edges`",
                f"add an edge from START, e.g. {{from: START, to: {sorted(state_nodes)[0]}}}",
                code="no_entry",
                at="key",
            )
        )
        return
    if pipeline.edges and START not in graph:
        problems.append(
            Problem(
                ("edges",),
                "no edge leaves START, so the state graph has no entry",
                code="no_entry",
                at="key",
            )
        )
        return
    loop = _find_loop(graph)
    if loop and pipeline.max_steps is None:
        index = next(i for i, e in enumerate(pipeline.edges) if e.from_ == loop[0])
        problems.append(
            Problem(
                ("edges", index),
                f"state loop {' -> '.join(loop)} has no bound",
                "set `max_steps` (the most steps a run may take)",
                code="unbounded_loop",
            )
        )
    reachable = _reach(graph, START)
    for name in sorted(state_nodes - reachable):
        problems.append(
            Problem(
                ("nodes", name),
                f"state node '{name}' cannot be reached from START",
                severity="warning",
                code="unreachable",
                at="key",
            )
        )


def _check_endpoint(
    pipeline: Pipeline, name: str, names: set[str], where: JsonPath, problems: list[Problem]
) -> None:
    if name not in names:
        hint = _did_you_mean(name, names | {START, END})
        problems.append(Problem(where, f"'{name}' is not a node", hint, code="unknown_ref"))
    elif pipeline.nodes[name].kind != "state":
        problems.append(
            Problem(
                where,
                f"'{name}' is a {pipeline.nodes[name].kind} node; state edges "
                "join state nodes (op call, ...)",
                code="bad_ref",
            )
        )


def _check_condition(expr: str, fields: set[str] | None, where: JsonPath, problems: list[Problem]) -> None:
    try:
        used = condition_names(expr)
    except TemplateSyntaxError as exc:
        problems.append(Problem(where, f"condition syntax error: {exc.message}", code="bad_expression"))
        return
    for name, _line, col in unsafe_reads("{{ (" + expr + ") }}"):
        column = max(col - 5, 1)  # within the expression, without the `{{ (` wrapped around it
        message = f"the condition reads '{name}' at its column {column}: the sandbox refuses Python internals"
        problems.append(Problem(where, message, code="bad_expression"))
    if fields is not None:
        for name in sorted(used - fields):
            problems.append(
                Problem(
                    where,
                    f"condition reads '{name}', which is not a state field",
                    _did_you_mean(name, fields) or f"state fields: {', '.join(sorted(fields))}",
                    code="unknown_field",
                )
            )


def _find_loop(graph: dict[str, list[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if color.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not color.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        color[node] = 2
        return None

    for node in list(graph):
        if not color.get(node):
            found = visit(node)
            if found:
                return found
    return None


def _reach(graph: dict[str, list[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _check_reachability(pipeline: Pipeline, problems: list[Problem]) -> None:
    consumers: dict[str, list[str]] = {}
    for name, spec in pipeline.nodes.items():
        for ref in spec.inputs():
            consumers.setdefault(ref, []).append(name)
    leads_to_sink: set[str] = set()
    todo = [n for n, s in pipeline.nodes.items() if s.kind == "sink"]
    while todo:
        node = todo.pop()
        if node in leads_to_sink:
            continue
        leads_to_sink.add(node)
        todo.extend(r for r in pipeline.nodes[node].inputs() if r in pipeline.nodes)
    for name, spec in pipeline.nodes.items():
        if spec.kind in ("source", "transform") and name not in leads_to_sink:
            problems.append(
                Problem(
                    ("nodes", name),
                    f"the output of '{name}' never reaches a sink, so it is computed and discarded",
                    "add a write_* node that reads it",
                    severity="warning",
                    code="unused",
                    at="key",
                )
            )


_KIND_PREFIXES = {
    "string": ("string", "large_string", "utf8", "large_utf8", "str"),
    "number": ("int", "uint", "float", "double", "decimal", "halffloat"),
    "list": ("list", "large_list", "fixed_size_list"),
}


def _is_kind(arrow_type: str, kind: str) -> bool:
    """Whether an Arrow type name is of ``kind``; an unknown type ("any") is given the benefit."""
    return arrow_type == "any" or arrow_type.startswith(_KIND_PREFIXES[kind])


def _check_columns(pipeline: Pipeline, problems: list[Problem]) -> dict[str, Columns | None]:
    known: dict[str, Columns | None] = {}
    pending = dict(pipeline.nodes)
    while pending:
        ready = [n for n, s in pending.items() if all(i in known for i in s.inputs())]
        if not ready:
            break
        for name in ready:
            spec = pending.pop(name)
            inputs = [known[i] for i in spec.inputs()]
            first = inputs[0] if inputs else None
            if first is not None:
                kinds = spec.column_kinds()
                for column, rel in spec.column_refs():
                    if column not in first:
                        hint = _did_you_mean(column, set(first)) or f"columns: {', '.join(first)}"
                        problems.append(
                            Problem(
                                ("nodes", name, *rel),
                                f"column '{column}' is not in the input of '{name}'",
                                hint,
                                code="unknown_column",
                            )
                        )
                    elif rel in kinds and not _is_kind(first[column], kinds[rel]):
                        problems.append(
                            Problem(
                                ("nodes", name, *rel),
                                f"column '{column}' is {first[column]}; op '{spec.op}' needs a "
                                f"{kinds[rel]} column here",
                                "cast it first (op: cast) or pick another column",
                                code="wrong_column_type",
                            )
                        )
            known[name] = spec.output_columns(inputs)
    return known
