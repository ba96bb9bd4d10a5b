"""The async core that runs a compiled graph: scheduling, retries, timeouts, interrupts, Ray dispatch.

Semantics:

- **A step is one node execution** (not a LangGraph superstep). Ready nodes run concurrently as
  asyncio tasks; as soon as one finishes, its update is merged through the reducers, a checkpoint is
  recorded, and its successors are scheduled. A slow branch never blocks an unrelated fast one.
  Steps are numbered in the order nodes *finish*.
- **State a node sees** is the state when it starts (a snapshot), with a ``Send`` payload set on top.
  Conditional routes see the state right after the node's update is merged.
- **Scheduling** a node that is already pending (scheduled, not started) does nothing: pending runs
  are deduplicated, except ``Send`` runs, which each carry their own payload. A node reached from two
  branches therefore runs once per arrival unless the arrivals coincide; use a join edge
  (``add_edge(["b", "c"], "d")``) to run ``d`` once after both.
- **Light nodes** run inline in the runner's event loop: sync functions are called directly (keep them
  short, or give them ``timeout_s``, which runs them in a thread), async ones are awaited. When exactly
  one node is ready and nothing else runs, it is awaited in place with no task created. Nodes with
  ``resources`` or ``heavy=True`` run as Ray tasks (Ray is started on first use when this process has
  not initialised it, sized as ``engine.runtime.cluster`` sizes a local Ray).
- **Errors**: each attempt may time out (``timeout_s``); failed attempts are retried per the node's
  ``RetryPolicy``; a node that still fails goes to its ``on_error`` node (error text in step meta and in
  the state field ``error_key`` if given), or ends the run ``failed`` with :class:`NodeFailed`; nodes in
  flight are cancelled and will re-run on resume. Checkpoints written so far are kept.
- **Limits**: more than ``recursion_limit`` node executions in one invocation raise
  :class:`GraphRecursionError` naming the nodes that ran most often (the loop).
- **Interrupts**: ``interrupt_before`` pauses before a node starts, ``interrupt_after`` after it
  finished (its successors are scheduled but not started), and ``interrupt(value)`` inside a node pauses
  it. Nodes already running are allowed to finish and their updates are kept, so work done before an
  interrupt is never repeated; only the interrupted node re-runs **from its start** on resume, where
  ``interrupt()`` returns the resume value instead of pausing.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from engine import telemetry
from engine.graph.builder import Command, GraphPlan, NodeDef, Send
from engine.graph.errors import GraphError, GraphInterrupt, GraphRecursionError, InvalidUpdate, NodeFailed
from engine.graph.remote import remote_call
from engine.spec.models import END, START

if TYPE_CHECKING:
    from engine.physical import Placement

Event = tuple[str, Any]
"""What the runner emits: (mode, payload) with mode ``values``, ``updates`` or ``events``."""


@dataclass
class Task:
    """One scheduled execution of a node."""

    node: str
    arg: dict[str, Any] | None = None
    """A ``Send`` payload (validated state values) set on the node's state snapshot."""
    resume: list[Any] = field(default_factory=list)
    """Values that successive ``interrupt()`` calls in this node return, in order."""
    skip_before: bool = False
    """Already paused by ``interrupt_before``; do not pause again."""
    interrupted: Any = None
    """The value of the ``interrupt(value)`` that paused this task, if any."""
    paused: bool = False
    done: dict[str, Any] = field(default_factory=dict)
    """Results of ``once(key, ...)`` calls this node already made: kept across its re-runs (a resume
    after ``interrupt()``, a retry), so their side effects happen once."""

    def to_json(self, plan: GraphPlan[Any]) -> dict[str, Any]:
        """JSON for a step's ``meta['pending']``: declared types only."""
        out: dict[str, Any] = {"node": self.node}
        if self.arg is not None:
            out["arg"] = plan.schema.dump(self.arg)
        if self.resume:
            out["resume"] = self.resume
        if self.skip_before:
            out["skip_before"] = True
        if self.paused:
            out["interrupt"] = self.interrupted
        if self.done:
            out["done"] = self.done
        return out

    @classmethod
    def from_json(cls, plan: GraphPlan[Any], data: Mapping[str, Any] | str) -> Task:
        """The inverse of :meth:`to_json` (a bare node name is a plain task)."""
        if isinstance(data, str):
            return cls(data)
        arg = data.get("arg")
        return cls(
            node=data["node"],
            arg=None if arg is None else plan.schema.load(data["node"], arg),
            resume=list(data.get("resume", [])),
            skip_before=bool(data.get("skip_before", False)),
            interrupted=data.get("interrupt"),
            paused="interrupt" in data,
            done=dict(data.get("done", {})),
        )


class Recorder(Protocol):
    """Where the runner reports steps (a checkpoint store behind it, in the app)."""

    def step(self, step: int, node: str, update: Mapping[str, Any], pending: list[Task], meta: dict) -> None:
        """Persist one step: ``update`` is the node's validated update, ``pending`` what runs next."""

    def finished(self, status: str, meta: dict) -> None:
        """Record the run's final (or paused) status."""


class _Scope:
    __slots__ = ("done", "index", "values")

    def __init__(self, values: list[Any], done: dict[str, Any] | None = None) -> None:
        self.values = values
        self.index = 0
        self.done = {} if done is None else done  # the task's own dict: results outlive this attempt


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("headrace_interrupt", default=None)


def once(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` the first time this node reaches ``once(key, ...)``; its result after that.

    A node that calls ``interrupt()`` re-runs from its start on resume (and a failed attempt re-runs on
    retry): wrap the side effects it makes before that point (sending an email, charging a card, an
    expensive call) in ``once`` and they happen once. The result is kept in the node's checkpoint, so it
    must be JSON when the graph is checkpointed, and survives a crash and a resume in a new process.
    """
    scope = _SCOPE.get()
    if scope is None:
        raise GraphError("once() was called outside a graph node (or inside a Ray-task node)")
    if key not in scope.done:
        scope.done[key] = fn(*args, **kwargs)
    return scope.done[key]


def interrupt(value: Any = None) -> Any:
    """Pause the run from inside a node, showing ``value``; on ``resume(run_id, value=v)`` returns ``v``.

    The node re-runs from its start when resumed, so code before ``interrupt()`` runs again: wrap side
    effects before it in :func:`once` (or move them after it, or into a separate node). With checkpoints,
    ``value`` and the resume value must be JSON. Not available in nodes that run as Ray tasks.
    """
    scope = _SCOPE.get()
    if scope is None:
        raise GraphError("interrupt() was called outside a graph node (or inside a Ray-task node)")
    if scope.index < len(scope.values):
        scope.index += 1
        return scope.values[scope.index - 1]
    raise GraphInterrupt(value)


def _metrics_served() -> bool:
    # engine.metrics (and prometheus_client) is imported only by a process that serves metrics
    module = sys.modules.get("engine.metrics")
    return module is not None and bool(module.serving())


class Runner:
    """One invocation (fresh or resumed) of a graph over a state dict, as an async event stream."""

    def __init__(
        self,
        plan: GraphPlan[Any],
        values: dict[str, Any],
        pending: list[Task],
        *,
        run_id: str,
        step: int,
        recursion_limit: int,
        interrupt_before: frozenset[str],
        interrupt_after: frozenset[str],
        modes: frozenset[str],
        recorder: Recorder | None,
        remote: dict[str, Any],
        join_seen: dict[int, set[str]] | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.plan = plan
        self.values = values
        self.frontier: deque[Task] = deque(pending)
        self.run_id = run_id
        self.step = step
        self.limit = recursion_limit
        self.before = interrupt_before
        self.after = interrupt_after
        self.modes = modes
        self.recorder = recorder
        self._remote_cache = remote
        self._placement = placement
        self.join_seen = join_seen or {}
        self.status = "running"
        self.interrupts: list[dict[str, Any]] = []
        self.executed: Counter[str] = Counter()
        self._running: dict[asyncio.Future[Any], Task] = {}
        self._started: dict[int, float] = {}
        self._stopping = False
        self._count = 0
        self._out: list[Event] = []

    def enter(self) -> None:
        """Schedule the nodes that START leads to (a fresh run's first frontier)."""
        self._schedule(self.plan.edges.get(START, ()))
        gotos: list[str | Send] = []
        for route in self.plan.routes.get(START, ()):
            gotos.extend(self._route(START, route))
        self._goto(START, gotos)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[Event]:
        """Run until no node is pending (or an interrupt pauses the run), emitting events."""
        plan, frontier, running, out = self.plan, self.frontier, self._running, self._out
        if "values" in self.modes:
            yield ("values", plan.schema.snapshot(self.values))
        try:
            while frontier or running:
                while frontier and not self._stopping:
                    task = frontier.popleft()
                    if task.node in self.before and not task.skip_before:
                        task.skip_before = True
                        frontier.appendleft(task)
                        self._pause({"node": task.node, "when": "before"})
                        break
                    if self._count >= self.limit:
                        raise self._recursion_error()
                    self._count += 1
                    self.executed[task.node] += 1
                    snap = self._snapshot(task)
                    if "events" in self.modes:
                        out.append(("events", {"event": "node_started", "node": task.node}))
                        self._started[id(task)] = time.perf_counter()
                    if not running and not frontier:
                        # the common case of a chain: await in place, no task to create
                        try:
                            result: Any = await self._execute(task, snap)
                        except (GraphInterrupt, Exception) as exc:
                            self._complete(task, None, exc)
                        else:
                            self._complete(task, result, None)
                    else:
                        running[asyncio.ensure_future(self._execute(task, snap))] = task
                    if out:
                        for ev in out:
                            yield ev
                        out.clear()
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for fut in [f for f in running if f in done]:  # in start order: deterministic
                    task = running.pop(fut)
                    failure = fut.exception()
                    if failure is not None and not isinstance(failure, Exception):
                        raise failure  # KeyboardInterrupt-like: stop now, checkpoints so far stay
                    self._complete(task, None if failure else fut.result(), failure)
                if out:
                    for ev in out:
                        yield ev
                    out.clear()
        except (asyncio.CancelledError, GeneratorExit):
            # the caller gave up on the run (task cancelled, stream closed early): it stays resumable
            if self.recorder is not None and self.status == "running":
                self.status = "cancelled"
                self.recorder.finished("cancelled", {})
            raise
        finally:
            for fut in running:
                fut.cancel()
        self._finish_run()
        for ev in out:
            yield ev
        out.clear()

    def _finish_run(self) -> None:
        if self._stopping:
            self.status = "interrupted"
            pending = [*self.frontier]
            if self.recorder is not None:
                self.step += 1
                meta = {"interrupts": self.interrupts, **self._join_meta()}
                self.recorder.step(self.step, "__interrupt__", {}, pending, meta)
                self.recorder.finished("interrupted", {"interrupts": self.interrupts})
            if "events" in self.modes:
                self._out.append(("events", {"event": "interrupted", "interrupts": self.interrupts}))
        else:
            self.status = "succeeded"
            if self.recorder is not None:
                self.recorder.finished("succeeded", {})
            if "events" in self.modes:
                self._out.append(("events", {"event": "run_finished", "status": "succeeded"}))

    def _snapshot(self, task: Task) -> Any:
        if task.arg is None:
            return self.plan.schema.snapshot(self.values)
        return self.plan.schema.snapshot({**self.values, **task.arg})

    def _pause(self, info: dict[str, Any]) -> None:
        self._stopping = True
        self.interrupts.append(info)

    # -- one node -------------------------------------------------------------------------------

    async def _execute(self, task: Task, state: Any) -> Any:
        if telemetry.recording():
            attributes = {
                "headrace.run_id": self.run_id,
                "headrace.node": task.node,
                "headrace.step": self._count,
            }
            with telemetry.span("graph.node", attributes):
                return await self._execute_node(task, state)
        return await self._execute_node(task, state)

    async def _execute_node(self, task: Task, state: Any) -> Any:
        node = self.plan.nodes[task.node]
        if node.remote:
            return await self._attempts(node, state, None)
        token = _SCOPE.set(_Scope(task.resume, task.done))
        try:
            if node.retry is None and node.timeout_s is None:
                if node.is_async:
                    return await node.fn(state)
                result = node.fn(state)
                return (await result) if inspect.isawaitable(result) else result
            return await self._attempts(node, state, task)
        finally:
            _SCOPE.reset(token)

    async def _attempts(self, node: NodeDef, state: Any, task: Task | None) -> Any:
        attempt = 0
        while True:
            attempt += 1
            if task is not None:
                _SCOPE.set(_Scope(task.resume, task.done))  # each attempt re-runs the node from its start
            try:
                return await self._attempt(node, state)
            except GraphInterrupt:
                raise
            except Exception as exc:
                if node.retry is None or attempt >= node.retry.max_attempts:
                    raise
                if "events" in self.modes:
                    self._out.append(
                        (
                            "events",
                            {
                                "event": "node_retry",
                                "node": node.name,
                                "attempt": attempt,
                                "error": repr(exc),
                            },
                        )
                    )
                await asyncio.sleep(node.retry.backoff_s(attempt))

    async def _attempt(self, node: NodeDef, state: Any) -> Any:
        if node.remote:
            call = remote_call(node, state, self._remote_cache, self._placement)
        elif node.is_async:
            call = node.fn(state)
        elif node.timeout_s is not None:
            call = asyncio.to_thread(node.fn, state)
        else:
            result = node.fn(state)
            return (await result) if inspect.isawaitable(result) else result
        if node.timeout_s is None:
            return await call
        try:
            return await asyncio.wait_for(call, node.timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"node {node.name!r} took longer than timeout_s={node.timeout_s}") from None

    # -- after a node ---------------------------------------------------------------------------

    def _complete(self, task: Task, result: Any, exc: BaseException | None) -> None:
        if isinstance(exc, GraphInterrupt):
            task.paused, task.interrupted = True, exc.value
            self.frontier.appendleft(task)
            self._pause({"node": task.node, "when": "inside", "value": exc.value})
            return
        meta: dict[str, Any] = {}
        try:
            update = self._advance(task, result, exc, meta)
        except Exception as bad:  # the node's own error, or a bad update, route or reducer
            self._fail(task, bad)
        if task.node in self.after:
            self._pause({"node": task.node, "when": "after"})
        self.step += 1
        if self.recorder is not None:
            pending = [*self._running.values(), *self.frontier]
            meta.update(self._join_meta())
            if _metrics_served() or telemetry.recording():
                self._timed_step(task.node, update, pending, meta)
            else:
                self.recorder.step(self.step, task.node, update, pending, meta)
        if self.modes:
            self._emit(task, update)

    def _timed_step(
        self, node: str, update: dict[str, Any], pending: list[Task], meta: dict[str, Any]
    ) -> None:
        """Write a step's checkpoint, timed for the metrics and traced (only when either is on)."""
        assert self.recorder is not None
        began = time.perf_counter()
        if telemetry.recording():
            with telemetry.span("graph.checkpoint", {"headrace.node": node, "headrace.step": self.step}):
                self.recorder.step(self.step, node, update, pending, meta)
        else:
            self.recorder.step(self.step, node, update, pending, meta)
        if _metrics_served():
            from engine import metrics

            metrics.CHECKPOINT_SECONDS.labels(self.plan.name).observe(time.perf_counter() - began)

    def _advance(
        self, task: Task, result: Any, exc: BaseException | None, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge a finished node's update and schedule what follows it; returns the update."""
        plan = self.plan
        node = plan.nodes[task.node]
        if exc is not None:
            if node.on_error is None:
                raise exc
            error = f"{type(exc).__name__}: {exc}"
            meta["error"] = {"node": task.node, "type": type(exc).__name__, "message": str(exc)}
            update = plan.schema.validate(task.node, {node.error_key: error}) if node.error_key else {}
            plan.schema.merge(self.values, update)
            self._schedule((node.on_error,))
            if "events" in self.modes:
                self._out.append(("events", {"event": "node_failed", "node": task.node, "error": error}))
            return update
        gotos: list[str | Send] = []
        update = self._update_of(task.node, result, gotos)
        plan.schema.merge(self.values, update)
        self._schedule(plan.edges.get(task.node, ()))
        for route in plan.routes.get(task.node, ()):
            gotos.extend(self._route(task.node, route))
        for i in plan.joins_of.get(task.node, ()):
            seen = self.join_seen.setdefault(i, set())
            seen.add(task.node)
            sources, target = plan.joins[i]
            if seen >= sources:
                seen.clear()
                self._schedule((target,))
        self._goto(task.node, gotos)
        return update

    def _emit(self, task: Task, update: dict[str, Any]) -> None:
        if "updates" in self.modes:
            self._out.append(("updates", {task.node: update}))
        if "values" in self.modes:
            self._out.append(("values", self.plan.schema.snapshot(self.values)))
        if "events" in self.modes:
            started = self._started.pop(id(task), None)
            elapsed = 0.0 if started is None else time.perf_counter() - started
            ev = {"event": "node_finished", "node": task.node, "step": self.step, "duration_s": elapsed}
            self._out.append(("events", ev))

    def _update_of(self, node: str, result: Any, gotos: list[str | Send]) -> dict[str, Any]:
        if result is None:
            return {}
        if isinstance(result, Command):
            goto = result.goto
            gotos.extend([goto] if isinstance(goto, (str, Send)) else goto)
            result = result.update or {}
        if not isinstance(result, Mapping):
            raise InvalidUpdate(
                f"node {node!r} returned {type(result).__name__}; return a dict of state updates, "
                "a Command, or None",
                node=node,
                key="",
            )
        return self.plan.schema.validate(node, result) if result else {}

    def _route(self, source: str, route: Any) -> list[str | Send]:
        chosen = route.fn(self.plan.schema.snapshot(self.values))
        items = chosen if isinstance(chosen, (list, tuple)) else [chosen]
        if route.path_map is not None:
            try:
                items = [i if isinstance(i, Send) else route.path_map[i] for i in items]
            except KeyError as exc:
                raise GraphError(
                    f"conditional edge from {source!r} returned {exc.args[0]!r}, not in its path_map"
                ) from None
        return [i for i in items if i is not None]

    def _goto(self, source: str, gotos: list[str | Send]) -> None:
        nodes = self.plan.nodes
        for g in gotos:
            if isinstance(g, Send):
                if g.node not in nodes:
                    raise GraphError(f"node {source!r} sent to unknown node {g.node!r}")
                who = f"Send({g.node!r}, ...) from {source!r} carries"
                arg = self.plan.schema.validate(g.node, g.arg, source=who)
                self.frontier.append(Task(g.node, arg=arg))
            elif g == END:
                continue
            elif isinstance(g, str) and g in nodes:
                self._schedule((g,))
            else:
                raise GraphError(
                    f"the way out of node {source!r} names {g!r}, which is not a node; "
                    f"return one of {', '.join(nodes)}, END or Send objects"
                )

    def _schedule(self, targets: tuple[str, ...]) -> None:
        frontier = self.frontier
        for t in targets:
            if not any(p.node == t and p.arg is None for p in frontier):
                frontier.append(Task(t))

    def _join_meta(self) -> dict[str, Any]:
        seen = {str(i): sorted(s) for i, s in self.join_seen.items() if s}
        return {"joins": seen} if seen else {}

    def _fail(self, task: Task, exc: BaseException) -> NoReturn:
        self.status = "failed"
        # the failed node stays pending, so a resume (after a fix) runs it again
        pending = [task, *self._running.values(), *self.frontier]
        if self.recorder is not None:
            info = {"node": task.node, "error": f"{type(exc).__name__}: {exc}"}
            self.recorder.finished("failed", {**info, "pending": [t.node for t in pending]})
        if isinstance(exc, GraphError):
            raise exc
        raise NodeFailed(
            f"node {task.node!r} of run {self.run_id!r} failed: {type(exc).__name__}: {exc}",
            node=task.node,
            run_id=self.run_id,
        ) from exc

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
