"""A compiled graph: invoke, stream, resume, update_state, history, fork — one async core, sync entry
points over it (``engine.graph.drive``).

A ``run_id`` is a **thread** (LangGraph's ``thread_id``), kept in the checkpoint store:

- ``invoke(input, run_id=r)`` starts run ``r``, or — when ``r`` exists — continues it: new input on a
  finished or paused run goes through the reducers and the graph runs again from START (pending tasks
  are dropped, as LangGraph does); ``invoke(None, run_id=r)`` resumes it.
- ``resume(r, value=..., goto=...)`` continues from the last checkpoint: finished work is never
  redone; ``value`` answers the pending ``interrupt()`` (or ``{interrupt_id: value}`` for several);
  ``goto`` adds nodes (or ``Send``s) to the step that runs next.
- ``get_state(r)``; ``update_state(r, values, as_node=...)`` edits the same run (a new ``__update__``
  record, through the reducers, as if ``as_node`` had written it); ``history(r)`` lists its records.
- ``fork(r, step=k, update=...)`` starts a *new* run whose parent is ``(r, k)``; a fork with no update
  replays. A run continues only with the graph it was started with (same ``graph_hash``).

How records are laid out is in ``engine.graph.threads``; how a run executes, in ``engine.graph.runner``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal

from pydantic import BaseModel

from engine.graph import algo, threads
from engine.graph.builder import GraphPlan
from engine.graph.drive import drive, iterate
from engine.graph.errors import GraphError, InvalidUpdate
from engine.graph.runner import Runner
from engine.graph.state import S
from engine.graph.threads import UNSET, RunState, StepView, StoreRecorder

if TYPE_CHECKING:
    from engine.physical import Placement

__all__ = ["CompiledGraph", "RunState", "StepView"]

StreamMode = Literal["values", "updates", "events"]
INPUT_NODE = "__input__"
UPDATE_NODE = "__update__"
_MODES = ("values", "updates", "events")


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
        """Run the graph on ``input`` to the end (or to an interrupt) and return the final state.

        A paused run's state carries its interrupts: ``result.__interrupt__`` (a list of dicts with
        ``id``, ``node``, ``when`` and ``value``). With an existing ``run_id``, continues that thread.
        """
        return drive(self.ainvoke(input, run_id=run_id, **options))

    def stream(
        self,
        input: Mapping[str, Any] | BaseModel | None,
        *,
        mode: StreamMode | list[StreamMode] = "values",
        run_id: str | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """Yield the state after each superstep (``values``), ``{node: update}`` per task
        (``updates``) or event dicts (``events``); with several modes, ``(mode, item)`` pairs.

        A pause shows in every mode: the last ``values`` item carries ``__interrupt__``, ``updates``
        yields ``{"__interrupt__": [...]}`` and ``events`` an ``interrupted`` event. ``resume=True``
        (with ``run_id``, ``value=``, ``goto=``) streams the continuation of that run instead;
        ``recursion_limit=`` and ``placement=`` (where Ray-task nodes go) too.
        """
        return iterate(self.astream(input, mode=mode, run_id=run_id, **options))

    def resume(
        self,
        run_id: str,
        *,
        value: Any = UNSET,
        goto: Any = None,
        update: Mapping[str, Any] | None = None,
        recursion_limit: int | None = None,
        placement: Placement | None = None,
    ) -> S:
        """Continue a run from its last checkpoint; ``value`` answers a pending ``interrupt()`` (a
        ``{interrupt_id: value}`` map answers several), ``goto`` adds nodes to the next step and
        ``update`` edits the state first (as ``update_state``; LangGraph's ``Command(resume, update,
        goto)``)."""
        return drive(
            self.aresume(
                run_id,
                value=value,
                goto=goto,
                update=update,
                recursion_limit=recursion_limit,
                placement=placement,
            )
        )

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
        runner = self._start(input, run_id, recursion_limit, frozenset(), placement)
        async for _ in runner.run():
            pass
        return self._result(runner)

    async def aresume(
        self,
        run_id: str,
        *,
        value: Any = UNSET,
        goto: Any = None,
        update: Mapping[str, Any] | None = None,
        recursion_limit: int | None = None,
        placement: Placement | None = None,
    ) -> S:
        """Async :meth:`resume`."""
        if update:
            self.update_state(run_id, update)
        runner = self._resumed(run_id, value, goto, recursion_limit, frozenset(), placement)
        async for _ in runner.run():
            pass
        return self._result(runner)

    async def astream(
        self,
        input: Mapping[str, Any] | BaseModel | None,
        *,
        mode: StreamMode | list[StreamMode] = "values",
        run_id: str | None = None,
        recursion_limit: int | None = None,
        resume: bool = False,
        value: Any = UNSET,
        goto: Any = None,
        placement: Placement | None = None,
    ) -> AsyncIterator[Any]:
        """Async :meth:`stream`; ``resume=True`` streams the continuation of run ``run_id`` instead."""
        modes: list[str] = [mode] if isinstance(mode, str) else list(mode)
        for m in modes:
            if m not in _MODES:
                raise GraphError(f"unknown stream mode {m!r}; use 'values', 'updates' or 'events'")
        if resume:
            if run_id is None:
                raise GraphError("astream(resume=True) needs the run_id to resume")
            runner = self._resumed(run_id, value, goto, recursion_limit, frozenset(modes), placement)
        else:
            runner = self._start(input, run_id, recursion_limit, frozenset(modes), placement)
        single = len(modes) == 1
        async for m, item in runner.run():
            yield item if single else (m, item)

    def _result(self, runner: Runner) -> S:
        output = self.plan.output
        if runner.interrupts:
            return self.plan.schema.paused(runner.values, runner.interrupts, output)
        if output is not None:
            return self.plan.schema.view(output, runner.values)
        return self.plan.schema.snapshot(runner.values)

    def _input(self, input: Any) -> Any:
        """The input as this graph takes it: only the input schema's fields when it has one."""
        model = self.plan.input
        if model is None or input is None:
            return input
        data = input.__dict__ if isinstance(input, BaseModel) else dict(input)
        return {k: v for k, v in data.items() if k in model.model_fields}

    # -- threads --------------------------------------------------------------------------------

    def get_state(self, run_id: str) -> RunState[S]:
        """The run's status, state after its last step, what runs next and its pending interrupts."""
        run = self._run(run_id)
        return threads.state_of(self.plan, run_id, run.status, self._steps(run_id))

    def update_state(
        self, run_id: str, values: Mapping[str, Any] | None, *, as_node: str | None = None
    ) -> int:
        """Edit run ``run_id`` in place: ``values`` go through the reducers as if node ``as_node`` had
        written them (its successors run next), or, without ``as_node``, the pending tasks stay next.
        Returns the step number of the new record; ``resume``/``invoke(None, ...)`` continue from it."""
        store = self._need_store("update_state")
        self._check_graph(run_id)
        record, more = threads.edit(self.plan, run_id, self._steps(run_id), values, as_node)
        store.append(record)
        store.set_status(run_id, "interrupted" if more else "succeeded", {})
        return record.step

    def history(self, run_id: str) -> list[StepView[S]]:
        """Every step of the run (its fork parents' included) with the state after it."""
        return threads.history(self.plan, self._steps(run_id))

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
            meta = {k: base.meta[k] for k in ("pending", "joins") if k in base.meta}
            store.append(
                StepRecord(
                    run_id=new_id,
                    step=step + 1,
                    node=UPDATE_NODE,
                    delta=self.plan.schema.dump(edit),
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
        thread: threads.Thread,
        run_id: str,
        step: int,
        limit: int | None,
        modes: frozenset[str],
        placement: Placement | None = None,
    ) -> Runner:
        from engine.graph.subgraphs import Subgraphs

        recorder = None if self.store is None else StoreRecorder(self.store, self.plan, run_id)
        return Runner(
            self.plan,
            thread.values,
            thread.tasks,
            run_id=run_id,
            step=step,
            base=thread.base,
            recursion_limit=limit or self.recursion_limit,
            interrupt_before=self.interrupt_before,
            interrupt_after=self.interrupt_after,
            modes=modes,
            recorder=recorder,
            remote=self._remote,
            join_seen=thread.joins,
            finished=thread.finished,
            placement=placement,
            subgraphs=Subgraphs(self, run_id) if self.plan.has_subgraphs else None,
        )

    def _start(
        self,
        input: Any,
        run_id: str | None,
        limit: int | None,
        modes: frozenset[str],
        placement: Placement | None = None,
    ) -> Runner:
        given = run_id is not None and self.store is not None
        if given and input is None and self.store.get_run(run_id) is not None:  # invoke(None): resume
            return self._resumed(run_id, UNSET, None, limit, modes, placement)  # type: ignore[arg-type]
        try:
            values = self.plan.schema.initial(self._input(input))
        except InvalidUpdate:
            if given and self.store.get_run(run_id) is not None:  # input for an existing thread only
                return self._continued(input, run_id, limit, modes, placement)  # type: ignore[arg-type]
            raise
        run_id = run_id or _new_run_id()
        tasks = algo.first_tasks(self.plan, values)
        thread = threads.Thread(values, tasks, 0, None, {}, {})  # type: ignore[arg-type]
        runner = self._runner(thread, run_id, 0, limit, modes, placement)
        if self.store is not None:
            from engine.graph.checkpoints.base import RunRecord
            from engine.graph.checkpoints.errors import CheckpointConflict

            assert isinstance(runner.recorder, StoreRecorder)
            run = RunRecord(
                run_id=run_id,
                graph=self.plan.name,
                graph_hash=self.plan.graph_hash,
                created_at=time.time(),
                status="running",
            )
            # the run with its input record: one commit; creating first saves a read per fresh run,
            # and a conflict means the thread exists
            try:
                self.store.create_run(run, [runner.recorder.record(0, INPUT_NODE, values, tasks, {})])
            except CheckpointConflict:
                return self._continued(input, run_id, limit, modes, placement)
        return runner

    def _continued(
        self, input: Any, run_id: str, limit: int | None, modes: frozenset[str], placement: Placement | None
    ) -> Runner:
        """New input on an existing thread: through the reducers, then from START again."""
        run = self._check_graph(run_id)
        if run.status == "running":
            raise GraphError(
                f"run {run_id!r} is running (or its process died mid-run); resume it before giving "
                "it new input"
            )
        steps = self._steps(run_id)
        thread = threads.load(self.plan, steps)
        data = self._input(input)
        if isinstance(data, BaseModel):
            data = {k: data.__dict__[k] for k in data.model_fields_set}
        update = self.plan.schema.validate(INPUT_NODE, data or {}, source="the input sets")
        self.plan.schema.merge(thread.values, update)
        step = steps[-1].step + 1
        thread.tasks = algo.first_tasks(self.plan, thread.values)
        thread.base, thread.finished = step, {}
        runner = self._runner(thread, run_id, step, limit, modes, placement)
        assert runner.recorder is not None
        meta = threads.pending_meta(self.plan, thread.tasks, {})
        if thread.joins:
            meta["joins"] = {str(i): sorted(s) for i, s in thread.joins.items() if s}
        runner.recorder.steps([(step, INPUT_NODE, update, thread.tasks, meta)], "running")  # one commit
        return runner

    def _resumed(
        self,
        run_id: str,
        value: Any,
        goto: Any,
        limit: int | None,
        modes: frozenset[str],
        placement: Placement | None = None,
    ) -> Runner:
        self._check_graph(run_id)
        steps = self._steps(run_id)
        thread = threads.load(self.plan, steps)
        threads.answer(run_id, thread, value, goto, self.plan)
        assert self.store is not None
        self.store.set_status(run_id, "running", {})
        return self._runner(thread, run_id, steps[-1].step, limit, modes, placement)

    def _check_graph(self, run_id: str) -> Any:
        run = self._run(run_id)
        if run.graph_hash != self.plan.graph_hash:
            raise GraphError(
                f"run {run_id!r} was started by a different graph (hash {run.graph_hash}, this graph "
                f"{self.plan.graph_hash}); continue it with the graph that started it"
            )
        return run

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


def _open_store(checkpoint: Any) -> Any:
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        from engine.graph.checkpoints import open_store

        return open_store(checkpoint)
    return checkpoint


def _new_run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
