"""A compiled graph: invoke, stream, resume, history, fork — one async core, sync entry points over it.

Checkpoints: a fresh run writes step 0 (``__input__``, the validated input as its delta) and then one
step after **every** node, holding only that node's update (JSON of the declared types, never pickle),
so storage grows linearly with a run. Each step's ``next`` lists what runs after it — the nodes
scheduled and those still in flight — and ``meta['pending']`` keeps what a bare name cannot say
(``Send`` payloads, resume values, interrupt flags). The state at step k is the fold of the deltas of
steps 0..k through the reducers.

- ``resume(run_id)`` folds the history and continues from the last step's ``next``: finished nodes are
  never run again; nodes that were in flight when the process died run again from their start. A run
  resumes only with the graph it was started with (same ``graph_hash``).
- ``history(run_id)`` lists every step with the state after it; ``fork(run_id, step=k, update=...)``
  starts a new run whose parent is ``(run_id, k)``, records ``update`` as an ``__update__`` step
  (applied through the reducers) and is then resumed like any run. A fork with no update replays.

Sync entry points (``invoke``, ``stream``, ``resume``) drive the async core on a per-thread event loop
kept for the thread's lifetime (cheap for many small invocations); called from inside a running loop
they drive it on a private loop in a helper thread instead, so node code then runs in that thread.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from engine.graph.builder import GraphPlan
from engine.graph.errors import GraphError
from engine.graph.runner import Runner, Task
from engine.graph.state import S

if TYPE_CHECKING:
    from engine.physical import Placement

StreamMode = Literal["values", "updates", "events"]
INPUT_NODE = "__input__"
UPDATE_NODE = "__update__"
_UNSET: Any = object()
T = TypeVar("T")


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


class _StoreRecorder:
    """Writes the runner's steps and statuses to a checkpoint store."""

    def __init__(self, store: Any, plan: GraphPlan[Any], run_id: str) -> None:
        from engine.graph.checkpoints.base import StepRecord

        self._record = StepRecord
        self.store = store
        self.plan = plan
        self.run_id = run_id

    def step(self, step: int, node: str, update: Mapping[str, Any], pending: list[Task], meta: dict) -> None:
        self.store.append(
            self._record(
                run_id=self.run_id,
                step=step,
                node=node,
                delta=self.plan.schema.dump(update),
                next=tuple(t.node for t in pending),
                created_at=time.time(),
                meta=_pending_meta(self.plan, pending, meta),
            )
        )

    def finished(self, status: str, meta: dict) -> None:
        self.store.set_status(self.run_id, status, meta)


def _pending_meta(plan: GraphPlan[Any], pending: list[Task], meta: dict) -> dict:
    # most steps have only plain tasks, fully described by `next`; keep those records small
    if any(t.arg is not None or t.resume or t.skip_before or t.paused for t in pending):
        return {**meta, "pending": [t.to_json(plan) for t in pending]}
    return meta


class CompiledGraph(Generic[S]):
    """A runnable graph; build it with ``Graph.compile()``."""

    def __init__(
        self,
        plan: GraphPlan[S],
        *,
        checkpoint: Any,
        interrupt_before: frozenset[str],
        interrupt_after: frozenset[str],
        recursion_limit: int,
    ) -> None:
        self.plan = plan
        self.store = _open_store(checkpoint)
        self._owns_store = isinstance(checkpoint, str)
        self.interrupt_before = interrupt_before
        self.interrupt_after = interrupt_after
        self.recursion_limit = recursion_limit
        self._remote: dict[str, Any] = {}  # Ray remote functions, made on first use

    # -- sync entry points ----------------------------------------------------------------------

    def invoke(
        self, input: Mapping[str, Any] | BaseModel | None, *, run_id: str | None = None, **options: Any
    ) -> S:
        """Run the graph on ``input`` to the end (or to an interrupt) and return the final state."""
        return _drive(self.ainvoke(input, run_id=run_id, **options))

    def stream(
        self,
        input: Mapping[str, Any] | BaseModel | None,
        *,
        mode: StreamMode | list[StreamMode] = "values",
        run_id: str | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """Yield the state after each step (``values``), ``{node: update}`` (``updates``) or event
        dicts (``events``); with several modes, ``(mode, item)`` pairs.

        ``resume=True`` (with ``run_id``, and ``value=`` for a pending ``interrupt()``) streams the
        continuation of that run instead of starting one from ``input``; ``recursion_limit=`` too, and
        ``placement=`` (a :class:`~engine.physical.Placement`: where nodes that run as Ray tasks go; the
        engine passes a tenant's CPU placement group).
        """
        return _iterate(self.astream(input, mode=mode, run_id=run_id, **options))

    def resume(
        self,
        run_id: str,
        *,
        value: Any = _UNSET,
        recursion_limit: int | None = None,
        placement: Placement | None = None,
    ) -> S:
        """Continue a run from its last checkpoint; ``value`` answers a pending ``interrupt()``."""
        return _drive(self.aresume(run_id, value=value, recursion_limit=recursion_limit, placement=placement))

    # -- the async core -------------------------------------------------------------------------

    async def ainvoke(
        self,
        input: Mapping[str, Any] | BaseModel | None,
        *,
        run_id: str | None = None,
        recursion_limit: int | None = None,
        placement: Placement | None = None,
    ) -> S:
        """Async :meth:`invoke`."""
        runner = self._fresh(input, run_id, recursion_limit, frozenset(), placement)
        async for _ in runner.run():
            pass
        return self.plan.schema.snapshot(runner.values)

    async def aresume(
        self,
        run_id: str,
        *,
        value: Any = _UNSET,
        recursion_limit: int | None = None,
        placement: Placement | None = None,
    ) -> S:
        """Async :meth:`resume`."""
        runner = self._resumed(run_id, value, recursion_limit, frozenset(), placement)
        async for _ in runner.run():
            pass
        return self.plan.schema.snapshot(runner.values)

    async def astream(
        self,
        input: Mapping[str, Any] | BaseModel | None,
        *,
        mode: StreamMode | list[StreamMode] = "values",
        run_id: str | None = None,
        recursion_limit: int | None = None,
        resume: bool = False,
        value: Any = _UNSET,
        placement: Placement | None = None,
    ) -> AsyncIterator[Any]:
        """Async :meth:`stream`; ``resume=True`` streams the continuation of run ``run_id`` instead."""
        modes: list[str] = [mode] if isinstance(mode, str) else list(mode)
        for m in modes:
            if m not in ("values", "updates", "events"):
                raise GraphError(f"unknown stream mode {m!r}; use 'values', 'updates' or 'events'")
        if resume:
            if run_id is None:
                raise GraphError("astream(resume=True) needs the run_id to resume")
            runner = self._resumed(run_id, value, recursion_limit, frozenset(modes), placement)
        else:
            runner = self._fresh(input, run_id, recursion_limit, frozenset(modes), placement)
        single = len(modes) == 1
        async for m, item in runner.run():
            yield item if single else (m, item)

    # -- checkpoints ----------------------------------------------------------------------------

    def history(self, run_id: str) -> list[StepView[S]]:
        """Every step of the run (its fork parents' included) with the state after it."""
        schema = self.plan.schema
        values: dict[str, Any] = {}
        out: list[StepView[S]] = []
        for rec in self._steps(run_id):
            _apply(self.plan, values, rec)
            out.append(
                StepView(
                    rec.step, rec.node, schema.snapshot(values), tuple(rec.next), rec.created_at, rec.meta
                )
            )
        return out

    def get_state(self, run_id: str) -> RunState[S]:
        """The run's status, state after its last step, what runs next and its pending interrupts."""
        run = self._run(run_id)
        steps = self._steps(run_id)
        values: dict[str, Any] = {}
        for rec in steps:
            _apply(self.plan, values, rec)
        last = steps[-1]
        interrupts = list(last.meta.get("interrupts", [])) if last.node == "__interrupt__" else []
        return RunState(
            run_id, run.status, last.step, self.plan.schema.snapshot(values), tuple(last.next), interrupts
        )

    def fork(
        self,
        run_id: str,
        step: int,
        update: Mapping[str, Any] | None = None,
        *,
        new_run_id: str | None = None,
    ) -> str:
        """A new run that shares ``run_id``'s history up to ``step``, then applies ``update``.

        Resume it to continue from there (without an update, that replays from step ``step``).
        """
        from engine.graph.checkpoints.base import RunRecord, StepRecord

        store = self._need_store("fork")
        parent = self._run(run_id)
        steps = store.steps(run_id, upto=step)
        if not steps or steps[-1].step != step:
            raise GraphError(f"run {run_id!r} has no step {step}; history() lists its steps")
        base = steps[-1]
        new_id = new_run_id or _new_run_id()
        store.create_run(
            RunRecord(
                run_id=new_id,
                graph=self.plan.name,
                graph_hash=parent.graph_hash,
                created_at=time.time(),
                status="interrupted",
                parent=(run_id, step),
                meta={},
            )
        )
        if update:
            edit = self.plan.schema.validate(UPDATE_NODE, update, source=f"fork of {run_id!r} updates")
            delta = self.plan.schema.dump(edit)
            meta = {k: base.meta[k] for k in ("pending", "joins") if k in base.meta}
            store.append(
                StepRecord(
                    run_id=new_id,
                    step=step + 1,
                    node=UPDATE_NODE,
                    delta=delta,
                    next=tuple(base.next),
                    created_at=time.time(),
                    meta=meta,
                )
            )
        return new_id

    def close(self) -> None:
        """Close the checkpoint store this graph opened from a URL (a store passed in is the caller's)."""
        if self.store is not None and self._owns_store:
            self.store.close()

    # -- preparing a run ------------------------------------------------------------------------

    def _runner(
        self,
        values: dict[str, Any],
        pending: list[Task],
        run_id: str,
        step: int,
        limit: int | None,
        modes: frozenset[str],
        joins: dict[int, set[str]] | None = None,
        placement: Placement | None = None,
    ) -> Runner:
        recorder = None if self.store is None else _StoreRecorder(self.store, self.plan, run_id)
        return Runner(
            self.plan,
            values,
            pending,
            run_id=run_id,
            step=step,
            recursion_limit=limit or self.recursion_limit,
            interrupt_before=self.interrupt_before,
            interrupt_after=self.interrupt_after,
            modes=modes,
            recorder=recorder,
            remote=self._remote,
            join_seen=joins,
            placement=placement,
        )

    def _fresh(
        self,
        input: Any,
        run_id: str | None,
        limit: int | None,
        modes: frozenset[str],
        placement: Placement | None = None,
    ) -> Runner:
        values = self.plan.schema.initial(input)
        run_id = run_id or _new_run_id()
        runner = self._runner(values, [], run_id, 0, limit, modes, placement=placement)
        runner.enter()
        if self.store is not None:
            from engine.graph.checkpoints.base import RunRecord
            from engine.graph.checkpoints.errors import CheckpointConflict

            try:
                self.store.create_run(
                    RunRecord(
                        run_id=run_id,
                        graph=self.plan.name,
                        graph_hash=self.plan.graph_hash,
                        created_at=time.time(),
                        status="running",
                    )
                )
            except CheckpointConflict:
                raise GraphError(
                    f"run {run_id!r} exists already; resume it, or choose another run_id"
                ) from None
            assert runner.recorder is not None
            runner.recorder.step(0, INPUT_NODE, values, list(runner.frontier), {})
        return runner

    def _resumed(
        self,
        run_id: str,
        value: Any,
        limit: int | None,
        modes: frozenset[str],
        placement: Placement | None = None,
    ) -> Runner:
        run = self._run(run_id)
        if run.graph_hash != self.plan.graph_hash:
            raise GraphError(
                f"run {run_id!r} was started by a different graph (hash {run.graph_hash}, this graph "
                f"{self.plan.graph_hash}); resume it with the graph that started it"
            )
        steps = self._steps(run_id)
        values: dict[str, Any] = {}
        for rec in steps:
            _apply(self.plan, values, rec)
        last = steps[-1]
        raw = last.meta.get("pending")
        pending = [Task.from_json(self.plan, t) for t in (raw if raw is not None else last.next)]
        if value is not _UNSET:
            paused = [t for t in pending if t.paused]
            if not paused:
                raise GraphError(f"run {run_id!r} has no pending interrupt() to answer with a value")
            for t in paused:
                t.resume.append(value)
        for t in pending:
            t.paused, t.interrupted = False, None
        joins = {int(i): set(s) for i, s in last.meta.get("joins", {}).items()}
        assert self.store is not None
        self.store.set_status(run_id, "running", {})
        return self._runner(values, pending, run_id, last.step, limit, modes, joins, placement)

    def _need_store(self, what: str) -> Any:
        if self.store is None:
            raise GraphError(
                f"{what} needs checkpoints: compile(checkpoint='memory://' or 'sqlite:///runs.db')"
            )
        return self.store

    def _run(self, run_id: str) -> Any:
        run = self._need_store("this").get_run(run_id)
        if run is None:
            from engine.graph.checkpoints.errors import RunNotFound

            raise RunNotFound(run_id)
        return run

    def _steps(self, run_id: str) -> list[Any]:
        self._run(run_id)
        steps = self._need_store("this").steps(run_id)
        if not steps:
            raise GraphError(f"run {run_id!r} has no steps recorded")
        return list(steps)


def _apply(plan: GraphPlan[Any], values: dict[str, Any], rec: Any) -> None:
    """Fold one stored step into ``values`` (step 0 holds the whole input state)."""
    delta = plan.schema.load(rec.node, rec.delta)
    if rec.node == INPUT_NODE:
        values.clear()
        values.update(delta)
    else:
        plan.schema.merge(values, delta)


def _open_store(checkpoint: Any) -> Any:
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        from engine.graph.checkpoints import open_store

        return open_store(checkpoint)
    return checkpoint


def _new_run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


# -- driving the async core from sync code --------------------------------------------------------

_local = threading.local()
_helper_lock = threading.Lock()
_helper: asyncio.AbstractEventLoop | None = None


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _helper_loop() -> asyncio.AbstractEventLoop:
    """A private loop in a daemon thread, for sync calls made while a loop runs in this thread."""
    global _helper
    with _helper_lock:
        if _helper is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="headrace-graph", daemon=True).start()
            _helper = loop
        return _helper


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _drive(coro: Awaitable[T]) -> T:
    if _in_loop():
        return asyncio.run_coroutine_threadsafe(_as_coro(coro), _helper_loop()).result()
    return _thread_loop().run_until_complete(coro)


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def _iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    nested = _in_loop()
    loop = _helper_loop() if nested else _thread_loop()

    def step(aw: Awaitable[Any]) -> Any:
        if nested:
            return asyncio.run_coroutine_threadsafe(_as_coro(aw), loop).result()
        return loop.run_until_complete(aw)

    try:
        while True:
            try:
                yield step(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            step(aclose())
