"""The loop that runs a compiled graph in supersteps: it executes tasks, records checkpoints and
emits events; the rules of a step (writes, conflicts, what runs next) are ``engine.graph.algo``'s.

Semantics (LangGraph's Pregel loop):

- **Supersteps.** All tasks of a step run concurrently (async nodes as asyncio tasks, sync nodes in
  worker threads, heavy nodes as Ray tasks), each on the state as it was when the step began (a
  ``Send`` payload set on top). When all have finished, their writes are applied together in a
  deterministic order and the next step's tasks are computed (see ``algo``'s docstring).
- **Checkpoints.** A step commits as one atomic write of one record per task (its update), in the
  apply order, the last carrying the next step's tasks; the run's last step commits with its final
  status (one commit per superstep: see ``checkpoints.sqlite``). A task that finishes while others of its step
  still run is kept at once as a ``__write__`` record (its *pending write*): after a crash mid-step,
  a resume re-runs only the tasks without one.
- **Errors.** A node's exception (after its retries) cancels its step's other tasks and reaches the
  caller as itself, with ``node``, ``step`` and ``run_id`` attributes and a note naming them; the run
  is ``failed`` and a resume re-runs the step's unfinished tasks. A node with ``on_error`` instead
  writes the error text to ``error_key`` and leads to its error node.
- **Interrupts.** ``interrupt_before`` stops before a step that would run a listed node (nothing of
  the step runs); ``interrupt_after`` stops after a step that ran one; ``interrupt(value)`` inside a
  node lets the step's other tasks finish (their writes kept as pending writes) and stops. Each
  interrupt has an id; resuming re-runs only the interrupted tasks, where ``interrupt()`` returns the
  resume value.
- **Limits.** More than ``recursion_limit`` supersteps in one invocation raise
  :class:`GraphRecursionError` naming the nodes that ran most often (the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from engine import telemetry
from engine.graph import algo
from engine.graph.algo import Outcome
from engine.graph.builder import GraphPlan
from engine.graph.calls import Caller
from engine.graph.errors import GraphError, GraphInterrupt, GraphRecursionError
from engine.graph.tasks import Task, interrupt_id, number

if TYPE_CHECKING:
    from engine.physical import Placement

Event = tuple[str, Any]
"""What the runner emits: (mode, payload) with mode ``values``, ``updates`` or ``events``."""

WRITE_NODE = "__write__"
INTERRUPT_NODE = "__interrupt__"


class Recorder(Protocol):
    """Where the runner reports steps (a checkpoint store behind it, in the app)."""

    def steps(
        self,
        records: list[tuple[int, str, Mapping[str, Any], list[Task], dict]],
        status: str | None = None,
        meta: dict | None = None,
    ) -> None:
        """Persist records ``(step, node, update, pending, meta)`` atomically, in order; with
        ``status``, the run's status (and ``meta``) in the same commit."""

    def finished(self, status: str, meta: dict) -> None:
        """Record the run's final (or paused) status."""


def _metrics_served() -> bool:
    # engine.metrics (and prometheus_client) is imported only by a process that serves metrics
    module = sys.modules.get("engine.metrics")
    return module is not None and bool(module.serving())


class Runner:
    """One invocation (fresh or continued) of a graph over a state dict, as an async event stream."""

    def __init__(
        self,
        plan: GraphPlan[Any],
        values: dict[str, Any],
        tasks: list[Task],
        *,
        run_id: str,
        step: int,
        base: int,
        recursion_limit: int,
        interrupt_before: frozenset[str],
        interrupt_after: frozenset[str],
        modes: frozenset[str],
        recorder: Recorder | None,
        remote: dict[str, Any],
        join_seen: dict[int, set[str]] | None = None,
        finished: dict[str, Outcome] | None = None,
        placement: Placement | None = None,
        subgraphs: Any = None,
    ) -> None:
        self.plan = plan
        self.values = values
        self.tasks = tasks
        self.run_id = run_id
        self.step = step
        """The number of the last record written (records are numbered contiguously)."""
        self.base = base
        """The record that scheduled ``tasks`` (their ids are ``base.index``)."""
        self.limit = recursion_limit
        self.before = interrupt_before
        self.after = interrupt_after
        self.modes = modes
        self.recorder = recorder
        self.join_seen = join_seen or {}
        self.finished: dict[str, Outcome] = finished or {}
        """Pending writes: outcomes of tasks of the current step that already finished."""
        self.status = "running"
        self.interrupts: list[dict[str, Any]] = []
        self.executed: Counter[str] = Counter()
        self._out: list[Event] = []
        events = self._out if "events" in modes else None
        self._caller = Caller(run_id, remote, placement, events, subgraphs)
        number(self.tasks, base)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[Event]:
        """Run supersteps until no task is left (or an interrupt pauses the run), emitting events."""
        plan, out = self.plan, self._out
        if "values" in self.modes:
            yield ("values", plan.schema.snapshot(self.values))
        supersteps = 0
        try:
            while self.tasks:
                if supersteps >= self.limit:
                    raise self._recursion_error()
                if self._stop_before():
                    break
                supersteps += 1
                outcomes = await self._superstep()
                if outcomes is None:  # an interrupt() inside a node
                    break
                self._commit(outcomes)
                for ev in out:
                    yield ev
                out.clear()
                if self.after and any(o.task.node in self.after for o in outcomes):
                    nodes = dict.fromkeys(o.task.node for o in outcomes if o.task.node in self.after)
                    for node in nodes:
                        info = {"id": interrupt_id(self.run_id, f"{self.base}", node, -2), "node": node}
                        self.interrupts.append({**info, "when": "after"})
                    break
        except (asyncio.CancelledError, GeneratorExit):
            # the caller gave up on the run (task cancelled, stream closed early): it stays resumable
            if self.recorder is not None and self.status == "running":
                self.status = "cancelled"
                self.recorder.finished("cancelled", {})
            raise
        self._finish_run()
        for ev in out:
            yield ev
        out.clear()

    def _stop_before(self) -> bool:
        if not self.before:
            return False
        hits = [
            t for t in self.tasks if t.node in self.before and not t.skip_before and t.id not in self.finished
        ]
        for t in hits:
            t.skip_before = True
            self.interrupts.append(
                {"id": interrupt_id(self.run_id, t.id, t.node, -1), "node": t.node, "when": "before"}
            )
        return bool(hits)

    def _finish_run(self) -> None:
        if self.interrupts:
            self.status = "interrupted"
            if self.recorder is not None:
                self.step += 1
                meta = {"interrupts": self.interrupts, **self._join_meta()}
                records: list[tuple[int, str, Mapping[str, Any], list[Task], dict]] = [
                    (self.step, INTERRUPT_NODE, {}, self.tasks, meta)
                ]
                self.recorder.steps(records, "interrupted", {"interrupts": self.interrupts})
            self._emit_interrupts()
        else:
            if self.recorder is not None and self.status != "succeeded":  # not already with the last step
                self.recorder.finished("succeeded", {})
            self.status = "succeeded"
            if "events" in self.modes:
                self._out.append(("events", {"event": "run_finished", "status": "succeeded"}))

    def _emit_interrupts(self) -> None:
        if "updates" in self.modes:
            self._out.append(("updates", {"__interrupt__": list(self.interrupts)}))
        if "values" in self.modes:
            self._out.append(("values", self.plan.schema.paused(self.values, self.interrupts)))
        if "events" in self.modes:
            self._out.append(("events", {"event": "interrupted", "interrupts": self.interrupts}))

    # -- one superstep --------------------------------------------------------------------------

    async def _superstep(self) -> list[Outcome] | None:
        """Run the step's unfinished tasks; their outcomes in task order, or None when interrupted."""
        tasks = self.tasks
        if len(tasks) == 1 and not self.finished:  # a chain's step: no pending writes to look up
            todo = tasks
        else:
            todo = [t for t in tasks if t.id not in self.finished]
        for t in todo:
            self.executed[t.node] += 1
        if "events" in self.modes:
            for t in todo:
                self._out.append(("events", {"event": "node_started", "node": t.node}))
        if len(todo) == 1 and not self.finished:
            task = todo[0]
            began = time.perf_counter()
            try:
                result = await self._caller.call(
                    self.plan.nodes[task.node], task, self._state(task), self.step, False
                )
            except GraphInterrupt as paused:
                self._paused(task, paused)
                self._keep_pending()
                return None
            except Exception as exc:
                outcome = self._failed(task, exc)
            else:
                outcome = self._outcome(task, result)
            outcome.seconds = time.perf_counter() - began
            return [outcome]
        running: dict[asyncio.Future[Any], Task] = {}
        began = time.perf_counter()
        for t in todo:
            node = self.plan.nodes[t.node]
            running[asyncio.ensure_future(self._caller.call(node, t, self._state(t), self.step, True))] = t
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for fut in [f for f in running if f in done]:  # in start order: deterministic
                    task = running.pop(fut)
                    failure = fut.exception()
                    if failure is not None and not isinstance(failure, Exception):
                        raise failure  # KeyboardInterrupt-like: stop now, checkpoints so far stay
                    if isinstance(failure, GraphInterrupt):
                        self._paused(task, failure)
                        continue
                    if failure is not None:
                        outcome = self._failed(task, failure)
                    else:
                        outcome = self._outcome(task, fut.result())
                    outcome.seconds = time.perf_counter() - began
                    self.finished[task.id] = outcome
                    if running or any(t.paused for t in todo):
                        self._pending_write(outcome)
        finally:
            for fut in running:
                fut.cancel()
        if any(t.paused for t in todo):
            self._keep_pending()
            return None
        return [self.finished[t.id] for t in self.tasks]

    def _state(self, task: Task) -> Any:
        values = self.values if task.arg is None else {**self.values, **task.arg}
        view = self.plan.nodes[task.node].view
        if view is None:
            return self.plan.schema.snapshot(values)
        return self.plan.schema.view(view, values)

    def _outcome(self, task: Task, result: Any) -> Outcome:
        try:
            writes, gotos = algo.writes_of(self.plan, task.node, result)
        except Exception as bad:
            self._fail(task, bad)
        return Outcome(task, writes, gotos)

    def _failed(self, task: Task, exc: Exception) -> Outcome:
        node = self.plan.nodes[task.node]
        if node.on_error is None:
            self._fail(task, exc)
        error = f"{type(exc).__name__}: {exc}"
        writes = [self.plan.schema.validate(task.node, {node.error_key: error})] if node.error_key else []
        info = {"node": task.node, "type": type(exc).__name__, "message": str(exc)}
        if "events" in self.modes:
            self._out.append(("events", {"event": "node_failed", "node": task.node, "error": error}))
        return Outcome(task, writes, [], info)

    def _paused(self, task: Task, paused: GraphInterrupt) -> None:
        task.paused, task.interrupted = True, paused.info
        self.interrupts.append(paused.info)

    def _keep_pending(self) -> None:
        """Keep the writes of the step's finished tasks: the interrupted ones alone re-run on resume."""
        for o in self.finished.values():
            self._pending_write(o)

    def _pending_write(self, o: Outcome) -> None:
        if self.recorder is None or o.kept:
            return
        o.kept = True
        self.step += 1
        meta = algo.outcome_to_json(self.plan, o)
        self.recorder.steps([(self.step, WRITE_NODE, {}, self.tasks, meta)])

    # -- the end of a step ----------------------------------------------------------------------

    def _commit(self, outcomes: list[Outcome]) -> None:
        plan = self.plan
        before = (
            dict(self.values)
            if len(outcomes) > 1 and any(o.task.node in plan.routes for o in outcomes)
            else None
        )
        try:
            algo.apply(plan, self.values, outcomes, self.step + 1)
            nxt = algo.next_tasks(plan, before, self.values, outcomes, self.join_seen)
        except Exception as bad:  # a write conflict, a failing route or reducer
            self._fail(outcomes[-1].task if len(outcomes) == 1 else _culprit(bad, outcomes), bad)
        if self.recorder is None:  # numbered as if recorded: task and interrupt ids depend on it
            if len(outcomes) == 1:
                self.step += len(outcomes[0].writes) or 1
            else:
                self.step += sum(len(o.writes) or 1 for o in outcomes)
        else:
            self._record(outcomes, nxt)
        self.base = self.step
        self.tasks = nxt
        if self.finished:
            self.finished = {}
        number(nxt, self.base)
        if self.modes:
            self._emit(outcomes)

    def _record(self, outcomes: list[Outcome], nxt: list[Task]) -> None:
        """Commit a step: one record per write group of each task, in apply order; the run's last
        step carries its final status in the same commit (a run that stops after it is interrupted)."""
        records: list[tuple[int, str, Mapping[str, Any], list[Task], dict]] = []
        first = self.step + 1
        several = len(outcomes) > 1 or len(outcomes[0].writes) > 1
        if not several and outcomes[0].error is None:  # one task, one update: a chain's step
            self.step += 1
            o = outcomes[0]
            records.append((self.step, o.task.node, o.writes[0] if o.writes else {}, nxt, {}))
        for o in outcomes if not records else ():
            for group in o.writes or [{}]:
                self.step += 1
                meta: dict[str, Any] = {} if o.error is None else {"error": o.error}
                if several:
                    meta["superstep"] = first  # the records of one step share its first number
                records.append((self.step, o.task.node, group, nxt, meta))
        if self.join_seen:
            records[-1][4].update(self._join_meta())
        last = not nxt and not (self.after and any(o.task.node in self.after for o in outcomes))
        status = "succeeded" if last else None
        if _metrics_served() or telemetry.recording():
            self._timed(records, status)
        else:
            self.recorder.steps(records, status)  # type: ignore[union-attr]
        if last:
            self.status = "succeeded"

    def _timed(
        self, records: list[tuple[int, str, Mapping[str, Any], list[Task], dict]], status: str | None
    ) -> None:
        """Write a step's checkpoint, timed for the metrics and traced (only when either is on)."""
        assert self.recorder is not None
        began = time.perf_counter()
        if telemetry.recording():
            with telemetry.span(
                "graph.checkpoint", {"headrace.node": records[-1][1], "headrace.step": self.step}
            ):
                self.recorder.steps(records, status)
        else:
            self.recorder.steps(records, status)
        if _metrics_served():
            from engine import metrics

            metrics.CHECKPOINT_SECONDS.labels(self.plan.name).observe(time.perf_counter() - began)

    def _emit(self, outcomes: list[Outcome]) -> None:
        out = self._out
        if "updates" in self.modes:
            for o in outcomes:  # as LangGraph: None for no update, a list for several
                writes = o.writes
                update = None if not writes else writes[0] if len(writes) == 1 else list(writes)
                out.append(("updates", {o.task.node: update}))
        if "events" in self.modes:
            for o in outcomes:
                ev = {
                    "event": "node_finished",
                    "node": o.task.node,
                    "step": self.step,
                    "duration_s": o.seconds,
                }
                out.append(("events", ev))
        if "values" in self.modes:
            out.append(("values", self.plan.schema.snapshot(self.values)))

    def _join_meta(self) -> dict[str, Any]:
        seen = {str(i): sorted(s) for i, s in self.join_seen.items() if s}
        return {"joins": seen} if seen else {}

    # -- failures -------------------------------------------------------------------------------

    def _fail(self, task: Task, exc: BaseException) -> NoReturn:
        self.status = "failed"
        # the step's tasks stay pending (finished ones as pending writes): a resume re-runs the rest
        if self.recorder is not None:
            info = {"node": task.node, "error": f"{type(exc).__name__}: {exc}"}
            self.recorder.finished("failed", {**info, "pending": [t.node for t in self.tasks]})
        if not isinstance(exc, GraphError):
            _annotate(exc, task.node, self.step + 1, self.run_id)
        raise exc

    def _recursion_error(self) -> GraphRecursionError:
        top = self.executed.most_common()
        most = top[0][1] if top else 0
        loop = [n for n, c in top if c >= max(1, most - 1)]
        self.status = "failed"
        message = (
            f"run {self.run_id!r} took {self.limit} steps without reaching END (recursion_limit="
            f"{self.limit}); the loop taken most often: {' → '.join(loop)} (~{most} times each). Add a "
            "route out of the loop, or raise recursion_limit in compile() or invoke()"
        )
        if self.recorder is not None:
            self.recorder.finished("failed", {"error": message, "loop": loop})
        return GraphRecursionError(message, limit=self.limit, loop=loop)


def _culprit(exc: BaseException, outcomes: list[Outcome]) -> Task:
    node = getattr(exc, "node", None)
    for o in outcomes:
        if o.task.node == node:
            return o.task
    return outcomes[-1].task


def _annotate(exc: BaseException, node: str, step: int, run_id: str) -> None:
    """Say on a node's own exception where it came from, keeping its type for the caller."""
    if getattr(exc, "_headrace_annotated", False):
        return
    add_note = getattr(exc, "add_note", None)  # Python 3.11+; on 3.10 the attributes alone say it
    if add_note is not None:
        add_note(f"raised by node {node!r} at step {step} of graph run {run_id!r}")
    for name, value in (("node", node), ("step", step), ("run_id", run_id), ("_headrace_annotated", True)):
        # an exception type with __slots__ or read-only fields keeps only the note
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, name, value)
