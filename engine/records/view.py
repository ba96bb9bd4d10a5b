"""Views of a run record: the per-node table ``headrace runs show`` prints and the report draws.

A view is a pure fold of the run's events, so it reads the same whether the run finished, failed, or
is still running (or died without a ``run_finished``). A resumed run has several *attempts* in one
log, each opened by a ``run_started``; counts add up over attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.records.events import Event


@dataclass
class NodeView:
    """What one node did over a run."""

    node: str
    op: str = ""
    line: int = 0
    col: int = 0
    file: str = ""
    """The file the node was written in when not the pipeline file (an included or inlined one)."""
    inputs: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows: int = 0
    failed: int = 0
    seconds: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0
    cached_requests: int = 0
    retries: int = 0
    dead_letter_rows: int = 0
    dead_letter_files: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def rows_per_s(self) -> float | None:
        """Rows out per second of the node's own time, ``None`` before it has any."""
        return self.rows / self.seconds if self.seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        out = dict(self.__dict__)
        out["rows_per_s"] = self.rows_per_s
        return out


@dataclass
class Batch:
    """One split or tail batch as it ran on a worker (a bar of the report's timeline)."""

    nodes: list[str]
    split: int
    began: float
    ended: float
    rows: int
    input: str | None = None
    start: int | None = None
    end: int | None = None
    attempt: int = 0


@dataclass
class Step:
    """One execution of a state-graph node (a bar of the report's timeline for a graph run)."""

    node: str
    step: int
    began: float
    """``ended`` less the node's own seconds (the ``node_finished`` event is written when it ends)."""
    ended: float
    seconds: float
    attempt: int = 0


@dataclass
class RunView:
    """A run record read whole: header facts, per-node table, batches, errors and series over time."""

    run_id: str
    pipeline: str = ""
    pipeline_file: str = ""
    tenant: str = "default"
    kind: str = "dataflow"
    status: str = "running"
    started_at: float = 0.0
    finished_at: float | None = None
    last_event_at: float = 0.0
    seconds: float | None = None
    attempts: int = 0
    nodes: dict[str, NodeView] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    """A state graph's node executions in the order they finished (empty for a dataflow)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    dead_letters: list[str] = field(default_factory=list)
    retries: int = 0
    error: str | None = None
    rows_over_time: list[tuple[float, int]] = field(default_factory=list)
    """(unix time, rows written by sinks so far), one point per committed batch."""
    cost_over_time: list[tuple[float, float]] = field(default_factory=list)
    """(unix time, LLM cost so far in USD), one point per ledger reading that changed it."""

    @property
    def cost_usd(self) -> float:
        """Spend over every node."""
        return sum(n.cost_usd for n in self.nodes.values())

    @property
    def rows_written(self) -> int | None:
        """Rows out of the dataflow's last nodes (those no node reads: its sinks); ``None`` for a graph."""
        if self.kind == "graph":
            return None
        read = {src for src, _ in self.edges}
        return sum(n.rows for name, n in self.nodes.items() if name not in read)

    @classmethod
    def of(cls, events: Sequence[Event]) -> RunView:
        """Fold a run's events (in order) into its view."""
        if not events:
            raise ValueError("a run record has at least its run_started event")
        view = cls(events[0].run_id)
        fold = _Fold(view)
        for event in events:
            fold.apply(event)
        fold.finish()
        return view

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``headrace runs show --json`` prints)."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "pipeline_file": self.pipeline_file,
            "tenant": self.tenant,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "last_event_at": self.last_event_at,
            "seconds": self.seconds,
            "attempts": self.attempts,
            "cost_usd": self.cost_usd,
            "nodes": {name: n.as_dict() for name, n in self.nodes.items()},
            "edges": [list(e) for e in self.edges],
            "errors": self.errors,
            "outputs": self.outputs,
            "dead_letters": self.dead_letters,
            "retries": self.retries,
            "error": self.error,
        }


class _Fold:
    """The per-event rules of :meth:`RunView.of`."""

    def __init__(self, view: RunView) -> None:
        self.view = view
        self.attempt: dict[str, dict[str, float]] = {}  # this attempt's batch sums, by node
        self.sink_rows = 0
        self.cost: dict[str, float] = {}

    def node(self, name: str) -> NodeView:
        return self.view.nodes.setdefault(name, NodeView(name))

    def apply(self, e: Event) -> None:
        v, d = self.view, e.data
        v.last_event_at = max(v.last_event_at, e.at)
        handler = getattr(self, "_" + e.kind, None)
        if handler is not None:
            handler(e, v, d)

    def _run_started(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        self.finish()
        v.attempts += 1
        if v.attempts == 1:
            v.started_at = e.at
        v.pipeline = str(d.get("pipeline", v.pipeline))
        v.pipeline_file = str(d.get("pipeline_file") or v.pipeline_file)
        v.tenant = str(d.get("tenant", v.tenant))
        v.kind = str(d.get("kind", v.kind))
        v.status, v.finished_at, v.error = "running", None, None
        for name, info in (d.get("nodes") or {}).items():
            n = self.node(name)
            n.op = str(info.get("op", n.op))
            n.line, n.col = int(info.get("line", 0)), int(info.get("col", 0))
            n.file = str(info.get("file") or "")
            n.inputs = list(info.get("inputs") or [])
        v.edges = [(str(a), str(b)) for a, b in d.get("edges") or []] or [
            (src, name) for name, n in v.nodes.items() for src in n.inputs
        ]

    def _node_started(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        n = self.node(e.node or "")
        n.started_at = e.at if n.started_at is None else n.started_at

    def _node_finished(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        name = e.node or ""
        n = self.node(name)
        if "step" in d:  # a state-graph step: one more execution of the node
            took = float(d.get("seconds") or 0.0)
            n.rows += 1
            n.rows_in += 1
            n.seconds += took
            v.steps.append(Step(name, int(d["step"]), e.at - took, e.at, took, v.attempts))
        else:  # a dataflow node's totals for this attempt replace the attempt's batch sums
            counted = self.attempt.pop(name, {})
            n.rows_in += int(d.get("rows_in") or 0) - int(counted.get("rows_in", 0))
            n.rows += int(d.get("rows") or 0) - int(counted.get("rows", 0))
            n.failed += int(d.get("failed") or 0) - int(counted.get("failed", 0))
            n.seconds += float(d.get("seconds") or 0.0) - counted.get("seconds", 0.0)
        n.finished_at = e.at

    def _batch_committed(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        rows: dict[str, int] = d.get("rows") or {}
        seconds: dict[str, float] = d.get("seconds") or {}
        rows_in: dict[str, int] = d.get("rows_in") or {}
        failed: dict[str, int] = d.get("failed") or {}
        for name, count in rows.items():
            n = self.node(name)
            added = {
                "rows": int(count),
                "rows_in": int(rows_in.get(name, 0)),
                "failed": int(failed.get(name, 0)),
                "seconds": float(seconds.get(name, 0.0)),
            }
            n.rows += int(added["rows"])
            n.rows_in += int(added["rows_in"])
            n.failed += int(added["failed"])
            n.seconds += added["seconds"]
            counted = self.attempt.setdefault(name, {})
            for key, value in added.items():
                counted[key] = counted.get(key, 0) + value
            if n.started_at is None:
                n.started_at = float(d.get("began") or e.at)
        if e.node:
            self.sink_rows += int(rows.get(e.node, 0))
            v.rows_over_time.append((float(d.get("ended") or e.at), self.sink_rows))
        if d.get("began") is not None:
            v.batches.append(
                Batch(
                    nodes=list(rows),
                    split=int(d.get("split", 0)),
                    began=float(d["began"]),
                    ended=float(d.get("ended") or e.at),
                    rows=int(rows.get(e.node or "", 0)) if e.node else sum(rows.values()),
                    input=d.get("input"),
                    start=d.get("start"),
                    end=d.get("end"),
                    attempt=v.attempts,
                )
            )

    def _retry(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        v.retries += 1
        if e.node:
            self.node(e.node).retries += 1

    def _dead_letter(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        n = self.node(e.node or "")
        n.dead_letter_rows += int(d.get("rows") or 0)
        path = str(d.get("file", ""))
        if path and path not in n.dead_letter_files:
            n.dead_letter_files.append(path)
        if path and path not in v.dead_letters:
            v.dead_letters.append(path)

    def _budget(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        if "cost_usd" not in d:  # a refused reservation (of the run, no node): no figures to show
            return
        n = self.node(e.node or "")
        n.cost_usd = float(d["cost_usd"])
        n.tokens = int(d.get("input_tokens") or 0) + int(d.get("output_tokens") or 0)
        n.requests = int(d.get("requests") or 0)
        n.cached_requests = int(d.get("cached_requests") or 0)
        self.cost[n.node] = n.cost_usd
        v.cost_over_time.append((e.at, sum(self.cost.values())))

    def _error(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        entry = {"at": e.at, "node": e.node, **d}
        v.errors.append(entry)
        if e.node:
            self.node(e.node).errors.append(entry)

    def _run_finished(self, e: Event, v: RunView, d: dict[str, Any]) -> None:
        v.status = str(d.get("status", "failed"))
        v.finished_at = e.at
        v.seconds = (v.seconds or 0.0) + float(d.get("seconds") or 0.0)
        v.error = d.get("error")
        v.outputs.update(d.get("outputs") or {})
        for path in d.get("dead_letters") or []:
            if path not in v.dead_letters:
                v.dead_letters.append(path)

    def finish(self) -> None:
        """Close the current attempt: its batch sums stand for nodes that never reported totals."""
        self.attempt.clear()
