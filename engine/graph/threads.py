"""A run as a thread: reading it back from the checkpoint store, and editing it.

Records (``engine.graph.checkpoints.base``): step 0 is ``__input__`` (the whole input state); each
superstep commits one record per task (its update, in apply order; ``meta['superstep']`` groups
them when there are several); ``__write__`` records keep a task's writes while its step is unfinished
(folded only when the step commits, so they are skipped here); ``__interrupt__`` marks a pause;
``__update__`` an edit (``update_state`` or a fork's); a later ``__input__`` is new input on a
finished thread, merged through the reducers. The state at any record is the fold of the deltas
before it; the last record's ``next`` (and ``meta['pending']``) are the tasks a resume runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

from engine.graph import algo
from engine.graph.algo import Outcome
from engine.graph.builder import GraphPlan, Send
from engine.graph.checkpoints.base import INPUT_NODE, UPDATE_NODE, StepRecord
from engine.graph.errors import GraphError
from engine.graph.runner import INTERRUPT_NODE, WRITE_NODE
from engine.graph.state import S
from engine.graph.tasks import Task, number

MARKERS = frozenset({INPUT_NODE, UPDATE_NODE, INTERRUPT_NODE, WRITE_NODE})
"""Record names that are not node executions."""
UNSET: Any = object()


@dataclass(frozen=True)
class StepView(Generic[S]):
    """One step of a run's history and the state right after it."""

    step: int
    node: str
    state: S
    next: tuple[str, ...]
    created_at: float
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunState(Generic[S]):
    """Where a run stands: its status, last step, state, what runs next and pending interrupts."""

    run_id: str
    status: str
    step: int
    state: S
    next: tuple[str, ...]
    interrupts: list[dict[str, Any]]


class StoreRecorder:
    """Writes the runner's records and statuses to a checkpoint store."""

    def __init__(self, store: Any, plan: GraphPlan[Any], run_id: str) -> None:
        self.store = store
        self.plan = plan
        self.run_id = run_id

    def steps(
        self,
        records: list[tuple[int, str, Mapping[str, Any], list[Task], dict]],
        status: str | None = None,
        meta: dict | None = None,
    ) -> None:
        made = [self.record(*r) for r in records]
        if len(made) == 1 and status is None:
            self.store.append(made[0])
        else:  # one transaction: the records and, with it, the run's status
            self.store.append_many(made, status=status, meta=meta)

    def record(
        self, step: int, node: str, update: Mapping[str, Any], pending: list[Task], meta: dict
    ) -> StepRecord:
        return StepRecord(
            run_id=self.run_id,
            step=step,
            node=node,
            delta=self.plan.schema.dump(update) if update else {},
            next=tuple(t.node for t in pending),
            created_at=time.time(),
            meta=pending_meta(self.plan, pending, meta),
        )

    def finished(self, status: str, meta: dict) -> None:
        self.store.set_status(self.run_id, status, meta)


def pending_meta(plan: GraphPlan[Any], pending: list[Task], meta: dict) -> dict:
    # most steps have only plain tasks, fully described by `next`; keep those records small
    for t in pending:
        if not t.plain or t.done:
            return {**meta, "pending": [t.to_json(plan) for t in pending]}
    return meta


def apply_record(plan: GraphPlan[Any], values: dict[str, Any], rec: StepRecord) -> None:
    """Fold one stored record into ``values`` (step 0 holds the whole input state)."""
    if rec.node in (WRITE_NODE, INTERRUPT_NODE):
        return
    delta = plan.schema.load(rec.node, rec.delta)
    if rec.node == INPUT_NODE and rec.step == 0:
        values.clear()
        values.update(delta)
    else:
        plan.schema.merge(values, delta)


@dataclass
class Thread:
    """A run read back: its state, the tasks a continuation runs, and their pending writes."""

    values: dict[str, Any]
    tasks: list[Task]
    base: int
    last: StepRecord
    joins: dict[int, set[str]]
    finished: dict[str, Outcome]


def load(plan: GraphPlan[Any], steps: list[StepRecord]) -> Thread:
    """The thread that ``steps`` (a run's whole history) describe."""
    values: dict[str, Any] = {}
    for rec in steps:
        apply_record(plan, values, rec)
    last = steps[-1]
    i = len(steps) - 1
    while i > 0 and steps[i].node in (WRITE_NODE, INTERRUPT_NODE):
        i -= 1
    base = steps[i].step
    raw = last.meta.get("pending")
    tasks = [Task.from_json(plan, t) for t in (raw if raw is not None else last.next)]
    number(tasks, base)
    by_id = {t.id: t for t in tasks}
    finished: dict[str, Outcome] = {}
    for rec in steps[i + 1 :]:
        task = by_id.get(rec.meta.get("task", ""))
        if rec.node == WRITE_NODE and task is not None:
            finished[task.id] = algo.outcome_from_json(plan, task, rec.meta)
    joins = {int(k): set(v) for k, v in last.meta.get("joins", {}).items()}
    return Thread(values, tasks, base, last, joins, finished)


def answer(run_id: str, thread: Thread, value: Any, goto: Any, plan: GraphPlan[Any]) -> None:
    """Give paused tasks their resume values and add ``goto``'s tasks (a resume's arguments).

    ``value`` is one value (refused when several interrupts are pending) or ``{interrupt_id: value}``.
    """
    paused = [t for t in thread.tasks if t.paused]
    if value is not UNSET:
        ids = {(t.interrupted or {}).get("id"): t for t in paused}
        if isinstance(value, Mapping) and value and all(k in ids for k in value):
            for k, v in value.items():
                ids[k].resume.append(v)
        elif len(paused) > 1:
            listed = ", ".join(f"{k} ({t.node})" for k, t in ids.items())
            raise GraphError(
                f"run {run_id!r} has {len(paused)} pending interrupts ({listed}); one value cannot "
                "answer them all: resume with value={interrupt_id: value, ...}"
            )
        elif paused:
            paused[0].resume.append(value)
        elif thread.last.node != INTERRUPT_NODE:
            raise GraphError(f"run {run_id!r} is not paused: there is no interrupt to answer with a value")
    for t in thread.tasks:
        t.paused, t.interrupted = False, None
    if goto is not None:
        gotos = [goto] if isinstance(goto, (str, Send)) else list(goto)
        pulls: set[str] = set()
        pushes: list[Task] = []
        algo._take(plan, "resume", gotos, pulls, pushes)
        have = {t.node for t in thread.tasks if t.arg is None}
        tasks = algo.ordered([*thread.tasks, *(Task(n) for n in pulls - have), *pushes])
        old = {t.id: t for t in thread.tasks}
        number(tasks, thread.base)
        thread.tasks = tasks
        thread.finished = {old[k].id: o for k, o in thread.finished.items() if k in old}  # renumbered


def edit(
    plan: GraphPlan[Any],
    run_id: str,
    steps: list[StepRecord],
    update: Mapping[str, Any] | None,
    as_node: str | None,
) -> tuple[StepRecord, bool]:
    """The ``__update__`` record that ``update_state(run_id, update, as_node=...)`` appends, and whether
    tasks remain to run after it.

    The update goes through the reducers as if ``as_node`` had written it: the tasks that follow are
    ``as_node``'s successors; without ``as_node``, the run's pending tasks are kept.
    """
    thread = load(plan, steps)
    edit_ = plan.schema.validate(UPDATE_NODE, update or {}, source=f"update_state of {run_id!r} sets")
    values = dict(thread.values)
    plan.schema.merge(values, edit_)
    meta: dict[str, Any] = {}
    if as_node is not None:
        if as_node not in plan.nodes:
            raise GraphError(f"update_state(as_node={as_node!r}): the graph has no such node")
        joins = {k: set(v) for k, v in thread.joins.items()}
        tasks = algo.next_tasks(plan, None, values, [Outcome(Task(as_node), [edit_])], joins)
        meta["as_node"] = as_node
        seen = {str(i): sorted(s) for i, s in joins.items() if s}
    else:
        tasks = thread.tasks
        seen = {str(i): sorted(s) for i, s in thread.joins.items() if s}
    if seen:
        meta["joins"] = seen
    rec = StepRecord(
        run_id=run_id,
        step=steps[-1].step + 1,
        node=UPDATE_NODE,
        delta=plan.schema.dump(edit_),
        next=tuple(t.node for t in tasks),
        created_at=time.time(),
        meta=pending_meta(plan, tasks, meta),
    )
    return rec, bool(tasks)


def history(plan: GraphPlan[Any], steps: list[StepRecord]) -> list[StepView[Any]]:
    """Every committed record with the state after it (pending writes are left out)."""
    schema = plan.schema
    values: dict[str, Any] = {}
    out: list[StepView[Any]] = []
    for rec in steps:
        if rec.node == WRITE_NODE:
            continue
        apply_record(plan, values, rec)
        out.append(
            StepView(rec.step, rec.node, schema.snapshot(values), tuple(rec.next), rec.created_at, rec.meta)
        )
    return out


def state_of(plan: GraphPlan[Any], run_id: str, status: str, steps: list[StepRecord]) -> RunState[Any]:
    """Where the run stands (see :class:`RunState`)."""
    thread = load(plan, steps)
    last = thread.last
    interrupts = list(last.meta.get("interrupts", [])) if last.node == INTERRUPT_NODE else []
    return RunState(
        run_id, status, last.step, plan.schema.snapshot(thread.values), tuple(last.next), interrupts
    )
