"""The long-lived engine: many runs in flight on one Ray, with admission control, tenants and quotas.

```python
from engine import Engine
with Engine() as engine:
    h = engine.submit(app, {"n": 0}, tenant="team-a", priority=0)   # -> RunHandle
    h.status(); h.result(timeout=5); h.stream(); h.cancel()
```

Where runs execute (chosen by measurement: an in-process 3-node graph costs ~25-40 us, a Ray task
round trip ~1.4 ms and an actor call ~0.6 ms):

- A state-graph app (``CompiledGraph`` or ``Graph``) runs as an asyncio task on the engine's own event
  loop (one daemon thread of the driver). Light nodes run inline, so thousands of runs interleave at
  their ``await`` points; nodes with ``resources``/``heavy`` still go to Ray tasks, awaited without
  blocking the loop. Cancelling such a run cancels its task (status ``cancelled``; with a checkpoint
  store it stays resumable).
- A pipeline file or ``CheckedPipeline`` runs through :func:`~engine.runtime.execute.run_checked` in a
  thread of the driver, on the engine's Ray (no start or stop per run). Cancelling it is best effort:
  a ``KeyboardInterrupt`` is raised in that thread, which the runtime turns into ``cancelled`` with the
  parts committed so far kept; a thread blocked inside native code sees it once it returns.
  :meth:`Engine.run` (submit and wait) runs a pipeline that may start at once in the calling thread
  instead, so Ctrl-C there stops it exactly as in ``headrace run`` (which is one ``Engine.run``).

Admission (:mod:`engine.runtime.admission`) bounds running and queued runs; tenants' quotas
(:mod:`engine.runtime.tenants`) bound each tenant, cap its LLM spend across runs and engines, and cap
the CPUs its runs use across the cluster. A tenant at its cost quota: its running LLM runs end
``budget_exceeded`` at their next reservation, its queued runs and new submissions end
``budget_exceeded`` without starting, until its period renews; other tenants go on. A tenant with
``max_cpus``: every Ray task and actor of its runs goes into its placement group
(:mod:`engine.runtime.tenant_cpus`), which the cluster's tenant ledger keeps while an engine declaring
it is open; :meth:`Engine.close` withdraws this engine's declarations, so the group goes with the last
engine that declares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import BudgetExceeded, HeadraceError
from engine.runtime.admission import Admission, EngineBusy, Ticket
from engine.runtime.handles import RunCancelled, RunHandle
from engine.runtime.tenants import DEFAULT_TENANT, ClusterTenants, TenantQuota

__all__ = ["Engine", "EngineBusy", "RunCancelled", "RunHandle", "TenantQuota"]

_RUN_OPTIONS = frozenset({"run_id", "resume", "checkpoint", "cache", "progress", "overrides", "value"})


class Engine:
    """A long-lived engine that runs many state graphs and pipelines at once on one Ray cluster.

    ``max_concurrent_runs`` bounds runs in flight and ``max_queued`` the runs waiting (beyond it,
    :meth:`submit` raises :class:`EngineBusy`); ``tenants`` maps tenant names to a :class:`TenantQuota`
    (others get ``default_quota``, which may only set the per-engine fields). ``start_ray=False`` defers
    Ray to the first run that needs it (each dataflow run then joins or starts Ray itself, as ``headrace
    run`` does). ``metrics_port`` serves Prometheus metrics (:mod:`engine.metrics`) on that port while
    the engine is open (0: any free port; the chosen one is then in ``metrics_port``), with the engine's
    queued and running runs by tenant besides every run's figures.
    Cost and CPU quotas are declared to the cluster's tenant ledger when the engine starts:
    a tenant whose quota another open engine declares differently is refused with ``QuotaError``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        max_concurrent_runs: int = 1024,
        max_queued: int = 100_000,
        tenants: Mapping[str, TenantQuota] | None = None,
        default_quota: TenantQuota | None = None,
        start_ray: bool = True,
        metrics_port: int | None = None,
    ) -> None:
        if default_quota is not None and default_quota.on_cluster:
            raise ValueError(
                "default_quota applies per engine (max_concurrent_runs, max_queued, weight); give cost and "
                "CPU quotas (max_cost_usd_per_period, max_cpus) to named tenants in `tenants=`"
            )
        self.address = address
        self.metrics_port = metrics_port
        self._stops_metrics = False
        self.tenants = dict(tenants or {})
        self._admission: Admission[RunHandle] = Admission(
            max_concurrent_runs, max_queued, self.tenants, default_quota
        )
        self._start_ray = start_ray
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._stack = contextlib.ExitStack()
        self._exhausted: dict[str, tuple[str, float]] = {}
        self._compiled: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._token = secrets.token_hex(3)
        holder = f"engine {self._token} (pid {os.getpid()} on {socket.gethostname()})"
        self._tenants = ClusterTenants(self.tenants, holder)
        self._closed = False
        self._active: set[RunHandle] = set()
        self._to_start: list[RunHandle] = []
        """Graph runs admitted from other threads, waiting for the loop's next ``_start_pending``."""

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)

    def start(self) -> Engine:
        """Start the event loop (and Ray, unless ``start_ray=False``); ``with Engine()`` calls it."""
        if self._loop is not None:
            return self
        if self._start_ray:
            from engine.runtime.cluster import ray_session

            self._stack.enter_context(ray_session(self.address))
            try:
                self._tenants.connect()
            except BaseException:
                self._stack.close()
                raise
        if self.metrics_port is not None:
            from engine import metrics

            self._stops_metrics = not metrics.serving()  # else the process (the CLI) serves them
            self.metrics_port = metrics.serve(self.metrics_port)
            metrics.track_engine(id(self), self._depth)
        loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=loop.run_forever, name="headrace-engine", daemon=True)
        self._loop_thread.start()
        self._loop = loop
        return self

    def close(self, *, cancel: bool = False) -> None:
        """Wait for every run to end (``cancel=True``: cancel them first), then withdraw this engine's
        tenant quotas from the cluster's ledger (a tenant's CPU placement group goes once no open engine
        declares it; spend stays on the ledger), and stop the loop and any Ray this engine started."""
        if self._closed:
            return
        self._closed = True
        if cancel:
            with self._lock:
                queued = self._admission.drain_all()
            for ticket in queued:
                ticket.item._finish(
                    "cancelled", error=RunCancelled(f"run {ticket.item.run_id!r} was cancelled")
                )
            with self._lock:
                running = list(self._active)
            for handle in running:
                self._cancel(handle)
        with self._idle:
            self._idle.wait_for(lambda: not self._admission.running and not self._admission.queued)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._loop_thread is not None
            self._loop_thread.join()
            self._loop.close()
        if self.metrics_port is not None:
            from engine import metrics

            metrics.untrack_engine(id(self))
            if self._stops_metrics:
                metrics.stop()
        self._tenants.close()
        self._stack.close()

    # -- submitting -----------------------------------------------------------------------------------

    def submit(
        self,
        app_or_spec: Any,
        inputs: Mapping[str, Any] | Any = None,
        *,
        tenant: str = DEFAULT_TENANT,
        priority: int = 0,
        **options: Any,
    ) -> RunHandle:
        """Queue a run and return its handle; it starts as soon as admission control allows.

        ``app_or_spec``: a ``CompiledGraph``, a ``Graph`` (compiled once, without checkpoints), a path
        to a pipeline file, or a ``CheckedPipeline``. ``inputs``: a graph's input state (for a pipeline
        file that is a state graph, too). Higher ``priority`` starts first within the tenant. Options:
        ``run_id``; for pipelines also ``overrides`` (``--set`` values, with a path), ``resume``,
        ``checkpoint``, ``cache``, ``progress``, ``value`` (with ``resume``: the answer to a state graph's
        pending ``interrupt()``). Raises :class:`EngineBusy` when the queue is full.
        """
        return self._submit(app_or_spec, inputs, tenant, priority, options, here=False)

    def run(
        self,
        app_or_spec: Any,
        inputs: Mapping[str, Any] | Any = None,
        *,
        tenant: str = DEFAULT_TENANT,
        priority: int = 0,
        **options: Any,
    ) -> Any:
        """:meth:`submit` and wait for :meth:`RunHandle.result`. A pipeline file that may start at once
        runs in the calling thread, so Ctrl-C there stops it cleanly (``headrace run`` uses this)."""
        handle = self._submit(app_or_spec, inputs, tenant, priority, options, here=True)
        if handle._run_here:
            self._run_checked(handle)
        return handle.result()

    def _submit(
        self, app_or_spec: Any, inputs: Any, tenant: str, priority: int, options: dict, *, here: bool
    ) -> RunHandle:
        if self._loop is None or self._closed:
            raise HeadraceError("the engine is not running; use `with Engine() as engine:`")
        unknown = set(options) - _RUN_OPTIONS
        if unknown:
            raise TypeError(f"unknown run options {sorted(unknown)}; known: {sorted(_RUN_OPTIONS)}")
        kind, target = self._target(app_or_spec, options.pop("overrides", ()), options.get("cache", True))
        run_id = options.get("resume") or options.pop("run_id", None) or self._new_run_id(kind)
        handle = RunHandle(self, run_id, tenant, kind, target, inputs, options)
        handle._owner = threading.get_ident() if here and kind == "checked" else None
        with self._lock:
            stop = self._stopped_reason(tenant)
            if stop is None:
                handle._ticket = self._admission.offer(tenant, priority, handle)
                ready = self._admission.take()
        if stop is not None:
            error = BudgetExceeded(_not_started(stop, run_id), scope=f"tenant '{tenant}'")
            handle._finish("budget_exceeded", error=error)
            return handle
        if ready:
            self._launch(ready)
        return handle

    def _target(self, app_or_spec: Any, overrides: Any, cache: bool = True) -> tuple[str, Any]:
        """What a submitted run executes: a compiled graph app, or a compiled pipeline (a pipeline that
        does not compile raises ``ConfigError`` here, at submit, before anything starts)."""
        from engine.check import CheckedPipeline, check_file
        from engine.compile import Compiled, compile_pipeline
        from engine.graph import CompiledGraph, Graph

        if isinstance(app_or_spec, CompiledGraph):
            return "graph", app_or_spec
        if isinstance(app_or_spec, Graph):
            app = self._compiled.get(app_or_spec)
            if app is None:
                app = self._compiled[app_or_spec] = app_or_spec.compile()
            return "graph", app
        if isinstance(app_or_spec, Compiled):
            return "checked", app_or_spec.raise_errors()
        if isinstance(app_or_spec, CheckedPipeline):
            return "checked", compile_pipeline(app_or_spec, cache=cache).raise_errors()
        if isinstance(app_or_spec, (str, os.PathLike)):
            checked = check_file(os.fspath(app_or_spec), overrides=list(overrides))
            return "checked", compile_pipeline(checked, cache=cache).raise_errors()
        raise TypeError(
            f"submit() takes a CompiledGraph, a Graph, a pipeline path, a CheckedPipeline or a Compiled, "
            f"not {type(app_or_spec).__name__}"
        )

    def _new_run_id(self, kind: str) -> str:
        if kind == "checked":  # spelt as `headrace run` always spelt them
            from engine.runtime.execute import new_run_id

            return new_run_id()
        # many graph runs start per second: a counter keeps their ids unique
        return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{self._token}-{next(self._ids):06d}"

    # -- starting and ending runs ---------------------------------------------------------------------

    def _launch(self, tickets: list[Ticket[RunHandle]]) -> None:
        with self._lock:
            self._active.update(t.item for t in tickets)
        graphs = [t.item for t in tickets if t.item._kind == "graph"]
        for ticket in tickets:
            if ticket.item._owner == threading.get_ident():
                ticket.item._run_here = True  # Engine.run() runs it in this thread
            elif ticket.item._kind == "checked":
                threading.Thread(
                    target=self._run_checked,
                    args=(ticket.item,),
                    name=f"headrace-{ticket.item.run_id}",
                    daemon=True,
                ).start()
        if graphs:
            assert self._loop is not None
            if threading.current_thread() is self._loop_thread:
                self._start_graphs(graphs)
                return
            # one wake-up of the loop for a burst of submissions, not one each: every wake-up is a
            # write to the loop's pipe, and the loop thread then takes the GIL from the submitter
            with self._lock:
                wake = not self._to_start
                self._to_start.extend(graphs)
            if wake:
                self._loop.call_soon_threadsafe(self._start_pending)

    def _start_pending(self) -> None:
        with self._lock:
            handles, self._to_start = self._to_start, []
        self._start_graphs(handles)

    def _start_graphs(self, handles: list[RunHandle]) -> None:
        assert self._loop is not None
        for handle in handles:
            if handle._cancel_requested:
                handle._finish("cancelled", error=RunCancelled(f"run {handle.run_id!r} was cancelled"))
                self._ended(handle)
            else:
                handle._status = "running"
                handle._task = self._loop.create_task(self._run_graph(handle))

    async def _run_graph(self, handle: RunHandle) -> None:
        app, interrupted = handle._target, False
        resume = handle._options.get("resume")
        try:
            placement = None
            if handle.tenant in self._tenants.quotas and any(n.remote for n in app.plan.nodes.values()):
                placement = await asyncio.to_thread(self._tenants.placement, handle.tenant)
            if placement is not None:
                from engine.graph.remote import check_placement

                check_placement(app.plan.nodes.values(), placement)
            # "values" alone: a paused run's last state carries its interrupts (no event dicts per step)
            if resume:
                stream = app.astream(None, mode="values", run_id=resume, resume=True, placement=placement)
            else:
                stream = app.astream(handle._inputs, mode="values", run_id=handle.run_id, placement=placement)
            async for item in stream:
                handle._push(item)
            last = handle._values[-1] if handle._values else None
            interrupted = bool(getattr(last, "__interrupt__", None))
            handle._finish("interrupted" if interrupted else "succeeded", result=last)
        except asyncio.CancelledError:
            handle._finish("cancelled", error=RunCancelled(f"run {handle.run_id!r} was cancelled"))
        except Exception as exc:
            handle._finish("failed", error=exc)
        finally:
            self._ended(handle)

    def _run_checked(self, handle: RunHandle) -> None:
        from engine.runtime.execute import run_checked

        handle._status = "running"
        options = handle._options
        try:
            with handle._lock:
                handle._thread_id = threading.get_ident()
            scope = self._tenants.scope(handle.tenant)
            if scope is not None and (stop := self._ask_exhausted(handle.tenant)) is not None:
                error = BudgetExceeded(_not_started(stop, handle.run_id), scope=scope.name)
                handle._finish("budget_exceeded", error=error)
                return
            placement = self._tenants.placement(handle.tenant)
            if handle._cancel_requested:
                raise KeyboardInterrupt
            summary = run_checked(
                handle._target,
                address=None if self._start_ray else self.address,
                run_id=handle.run_id,
                resume=options.get("resume"),
                progress=options.get("progress", False),
                cache=options.get("cache", True),
                input=handle._inputs,
                checkpoint=options.get("checkpoint"),
                tenant=scope,
                tenant_name=handle.tenant,
                tenant_weight=self._admission.weight(handle.tenant),
                placement=placement,
                observe=lambda live: setattr(handle, "_live", live),
                **({"value": options["value"]} if "value" in options else {}),
            )
            with handle._lock:
                handle._thread_id = None
                _clear_async_exc()
            if summary.status == "budget_exceeded" and scope is not None:
                self._ask_exhausted(handle.tenant)
            handle._finish(summary.status, result=summary)
        except KeyboardInterrupt:
            handle._finish("cancelled", error=RunCancelled(f"run {handle.run_id!r} was cancelled"))
        except BaseException as exc:
            handle._finish("failed", error=exc)
        finally:
            with handle._lock:
                handle._thread_id = None
            self._ended(handle)

    def _depth(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return self._admission.depth()

    def _ended(self, handle: RunHandle) -> None:
        if handle._kind == "graph" and self.metrics_port is not None:
            from engine import metrics

            # a pipeline run is counted by run_checked; a graph app's run is counted here
            metrics.finish(_Finished(handle.run_id, handle._name, handle._status))
        with self._lock:
            if handle._ticket is not None:
                self._admission.finished(handle._ticket)
            self._active.discard(handle)
            ready = self._admission.take()
            if not self._admission.running and not self._admission.queued:
                self._idle.notify_all()
        if ready:
            self._launch(ready)

    def _cancel(self, handle: RunHandle) -> bool:
        if handle.done():
            return False
        with self._lock:
            withdrawn = handle._ticket is not None and self._admission.withdraw(handle._ticket)
            if withdrawn and not self._admission.running and not self._admission.queued:
                self._idle.notify_all()
        if withdrawn:
            handle._finish(
                "cancelled", error=RunCancelled(f"run {handle.run_id!r} was cancelled while queued")
            )
            return True
        with handle._lock:
            again, handle._cancel_requested = handle._cancel_requested, True
        if again:
            return True  # one interrupt per run: a second one could land in the engine's own code
        if handle._kind == "graph":
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_cancel_task, handle)
            return True
        with handle._lock:
            if handle._thread_id is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(handle._thread_id), ctypes.py_object(KeyboardInterrupt)
                )
        return True

    # -- tenants' cost quotas -------------------------------------------------------------------------

    def _ask_exhausted(self, tenant: str) -> str | None:
        """Ask the cluster's tenant ledger whether ``tenant`` is at its quota; if so, stop its queued runs."""
        stop = self._tenants.exhausted(tenant)
        if stop is None:
            return None
        reason, renews = stop
        with self._lock:
            self._exhausted[tenant] = (reason, time.monotonic() + renews)
            drained = self._admission.drain(tenant)
            if not self._admission.running and not self._admission.queued:
                self._idle.notify_all()
        for ticket in drained:
            error = BudgetExceeded(_not_started(reason, ticket.item.run_id), scope=f"tenant '{tenant}'")
            ticket.item._finish("budget_exceeded", error=error)
        return reason

    def _stopped_reason(self, tenant: str) -> str | None:
        stop = self._exhausted.get(tenant)
        if stop is None:
            return None
        if time.monotonic() >= stop[1]:
            del self._exhausted[tenant]
            return None
        return stop[0]


def _not_started(reason: str, run_id: str) -> str:
    return f"run {run_id!r} was not started: {reason}"


def _cancel_task(handle: RunHandle) -> None:
    if handle._task is not None:
        handle._task.cancel()


def _clear_async_exc() -> None:
    """Drop a cancel that arrived after the run returned (it must not hit the engine's own code)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), ctypes.c_void_p(None))


@dataclass(frozen=True)
class _Finished:
    """What the metrics count of a finished graph-app run."""

    run_id: str
    pipeline: str
    status: str
