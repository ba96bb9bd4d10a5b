"""The runs a warm engine serves: submitted to its :class:`~engine.runtime.engine.Engine`, each with an
event log (accepted, progress every half second, end) and a view for ``GET /v1/runs/{id}``.

Submitting checks the pipeline through the compile cache first, so a refused pipeline never reaches
the engine; a run's end event carries what ``headrace run`` prints and exits with.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.compile import Compiled
from engine.errors import ConfigError, HeadraceError
from engine.policy import Policy, PolicyViolation
from engine.records import RecordStore
from engine.runtime.engine import Engine, RunHandle
from engine.runtime.handles import RunCancelled
from engine.service.compile_cache import CompileCache
from engine.service.events import EventLog
from engine.service.ledger import RunLedger
from engine.service.models import PipelineSource, RunRequest

_TICK_S = 0.5
_KEEP_ENDED = 256
"""Ended runs held in memory with their event logs (for a late reader of their stream). Older ones are
answered from the ledger and the runs store (as after a restart), so memory stays flat however many runs
a server has taken (``python -m benchmarks.service_load --rounds 2`` shows it)."""
_INTERNAL = 70


class UnknownRun(KeyError):
    """No run with that id is held by this engine."""


class DuplicateRun(ValueError):
    """A run with that id is already held by this engine."""


@dataclass
class ServedRun:
    """A run submitted through the service."""

    handle: RunHandle
    events: EventLog
    last_progress: Any = field(default=None)


class ServedRuns:
    """Submits runs to the engine and keeps their event logs."""

    def __init__(
        self,
        engine: Engine,
        cache: CompileCache,
        loop: asyncio.AbstractEventLoop,
        ledger: RunLedger | None = None,
        records: RecordStore | None = None,
        policies: Mapping[str, Policy] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.ledger = ledger
        self.records = records
        """The runs store's records (the per-node table, reports), where the runs write them."""
        self.policies = dict(policies or {})
        """Each tenant's own policy (the configuration's), applied on top of the server's."""
        self._loop = loop
        self._runs: dict[str, ServedRun] = {}
        self._lock = threading.Lock()
        self._ticker: asyncio.Task[None] | None = None

    def submit(self, request: RunRequest, *, token: str = "owner") -> tuple[ServedRun, list[dict[str, Any]]]:
        """Check and submit ``request`` for the caller ``token`` (its id, for the ledger); raise
        :class:`ConfigError` for an invalid pipeline. The run is in the ledger before it is submitted, so
        an accepted run is never lost from ``GET /v1/runs`` (see :mod:`engine.service.ledger`)."""
        tenant = request.tenant or "default"
        compiled = self._check(request, tenant)
        run_id = request.resume or request.run_id
        with self._lock:
            if run_id is not None and run_id in self._runs and not self._runs[run_id].handle.done():
                raise DuplicateRun(f"run {run_id!r} is in flight on this engine")
        fresh = run_id is None
        if run_id is None:  # chosen here so the ledger has the run before the engine does
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(6)}"
        options: dict[str, Any] = {"cache": request.cache, "progress": False}
        for name in ("resume", "checkpoint"):
            if (value := getattr(request, name)) is not None:
                options[name] = value
        if request.resume is None:
            options["run_id"] = run_id
        if "value" in request.model_fields_set:
            options["value"] = request.value
        # a fresh id has no earlier row to put back if the engine refuses the run
        previous = self.ledger.get(run_id) if self.ledger is not None and not fresh else None
        if self.ledger is not None:
            stored = request.model_dump(exclude={"env", "value"}, exclude_none=True)
            self.ledger.accept(run_id, tenant, compiled.checked.plan.name, token, stored)
        try:
            handle = self.engine.submit(
                compiled, request.inputs, tenant=tenant, priority=request.priority, **options
            )
        except BaseException:
            if self.ledger is not None:
                self.ledger.restore(run_id, previous)
            raise
        served = ServedRun(handle, EventLog(self._loop))
        served.events.append("accepted", {"run_id": handle.run_id, "tenant": handle.tenant})
        with self._lock:
            self._runs[handle.run_id] = served
            if len(self._runs) > _KEEP_ENDED:
                self._forget_ended()
        handle.add_done_callback(lambda h: self._ended(served, h))
        return served, [d.as_dict() for d in compiled.problems]

    def _ended(self, served: ServedRun, handle: RunHandle) -> None:
        ended = view(handle)
        if self.ledger is not None:
            error = ended.get("error")
            self.ledger.finish(handle.run_id, ended["status"], error["message"] if error else None)
        served.events.append("end", ended)

    def _forget_ended(self) -> None:
        ended = [run_id for run_id, s in self._runs.items() if s.handle.done()]
        for run_id in ended[: len(self._runs) - _KEEP_ENDED]:  # oldest first: dicts keep insertion order
            del self._runs[run_id]

    def get(self, run_id: str) -> ServedRun:
        """The run ``run_id``, or :class:`UnknownRun`."""
        with self._lock:
            served = self._runs.get(run_id)
        if served is None:
            raise UnknownRun(run_id)
        return served

    def cancel_all(self) -> int:
        """Cancel every run in flight (the server is stopping); how many were."""
        with self._lock:
            live = [s.handle for s in self._runs.values() if not s.handle.done()]
        return sum(1 for handle in live if handle.cancel())

    def in_flight(self) -> int:
        """Runs not ended yet."""
        with self._lock:
            return sum(1 for s in self._runs.values() if not s.handle.done())

    # -- progress ---------------------------------------------------------------------------------------

    def start_ticker(self) -> None:
        """Post each live run's progress every half second (from the server's loop)."""
        self._ticker = self._loop.create_task(self._tick())

    async def stop_ticker(self) -> None:
        """Stop posting progress."""
        if self._ticker is not None:
            self._ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            with self._lock:
                live = [s for s in self._runs.values() if not s.handle.done()]
            for served in live:
                snapshot = served.handle.progress()
                if snapshot is not None and snapshot != served.last_progress:
                    served.last_progress = snapshot
                    served.events.append("progress", {"status": served.handle.status(), "summary": snapshot})

    def policy_for(self, tenant: str) -> Policy:
        """The policy ``tenant``'s pipelines are checked and run under: the server's (its environment's,
        read now) widened by the tenant's own when the configuration gives it one (never another's)."""
        server = Policy.from_env()
        own = self.policies.get(tenant)
        return server if own is None else server.widened(own)

    def _check(self, request: RunRequest, tenant: str) -> Compiled:
        env: Mapping[str, str] = os.environ if request.env is None else request.env
        policy = self.policy_for(tenant)
        label, content = read_source(request, env, policy)
        return self.cache.check(
            label,
            content,
            overrides=request.overrides,
            env=env,
            cwd=request.cwd,
            cache=request.cache,
            policy=policy,
        )


def read_source(request: PipelineSource, env: Mapping[str, str], policy: Policy) -> tuple[str, bytes]:
    """The pipeline a request names: its label (``-`` for text, else the path as given) and its bytes.

    A ``path`` must lie under ``policy``'s allowed roots when it names any (``PolicyViolation``, a 403); a
    file that cannot be read is refused as ``headrace validate`` refuses it (``ConfigError``)."""
    if request.pipeline is not None:
        return "-", request.pipeline.encode("utf-8")
    assert request.path is not None
    where = os.path.join(request.cwd or os.getcwd(), request.path)
    if policy.roots is not None and (problem := policy.path_problem(where)) is not None:
        raise PolicyViolation(f"pipeline file {request.path}: {problem}")
    try:
        with open(where, "rb") as fh:
            return request.path, fh.read()
    except OSError:
        # the same refusal `headrace validate` gives for a file it cannot read
        from engine.check import check_file

        check_file(where, overrides=request.overrides, env=env, cwd=request.cwd)
        raise


def view(handle: RunHandle) -> dict[str, Any]:
    """What ``GET /v1/runs/{id}`` and a run's ``end`` event say about it (a ``RunView`` as JSON)."""
    out: dict[str, Any] = {"run_id": handle.run_id, "tenant": handle.tenant, "status": handle.status()}
    if not handle.done():
        return out
    try:
        result = handle.result(timeout=0)
    except ConfigError as exc:
        problems = [d.as_dict() for d in exc.diagnostics]
        out.update(
            exit_code=exc.exit_code, error={"code": exc.code, "message": str(exc), "problems": problems}
        )
        return out
    except RunCancelled as exc:
        out.update(exit_code=exc.exit_code, error={"code": exc.code, "message": str(exc)})
        return out
    except HeadraceError as exc:
        out.update(exit_code=exc.exit_code, error={"code": exc.code, "message": str(exc)})
        return out
    except BaseException as exc:  # a bug in headrace: said as the CLI says it
        message = f"{type(exc).__name__}: {exc}"
        out.update(exit_code=_INTERNAL, error={"code": "internal", "message": message})
        return out
    out.update(
        status=result.status, exit_code=result.exit_code, summary=result.as_dict(), text=result.render()
    )
    return out
