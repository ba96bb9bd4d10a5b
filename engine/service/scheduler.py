"""The loop that fires the service's schedules (:mod:`engine.service.schedules` holds the rules): every
``tick_s`` it asks each schedule what is due, claims it, and submits the runs as the schedule's tenant,
applying the overlap policy against the schedule's previous run. Each fire, skip and failure is
appended to the audit log."""

from __future__ import annotations

import asyncio
import logging
import time

from engine.audit import AuditLog
from engine.errors import HeadraceError
from engine.service.models import RunRequest
from engine.service.runs import ServedRuns, UnknownRun
from engine.service.schedules import ScheduleStore, Stored, due, overrides_at, stamp

_log = logging.getLogger(__name__)


class Scheduler:
    """Fires the schedules of ``store`` into ``runs``."""

    def __init__(self, store: ScheduleStore, runs: ServedRuns, audit: AuditLog, tick_s: float = 1.0) -> None:
        self.store = store
        self.runs = runs
        self.audit = audit
        self.tick_s = tick_s

    async def run(self) -> None:
        """Tick until cancelled (the checks and submissions run in a worker thread)."""
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a schedule's trouble must not stop the others, now or later
                _log.exception("the scheduler's tick failed")
            await asyncio.sleep(self.tick_s)

    def tick(self, now: float | None = None) -> list[str]:
        """Fire what is due now; the ids of the runs submitted."""
        now = time.time() if now is None else now
        return [run_id for stored in self.store.all() for run_id in self._fire(stored, now)]

    def _fire(self, stored: Stored, now: float) -> list[str]:
        spec = stored.spec
        times, new_last = due(spec, stored.created, stored.last_fire, now)
        if new_last is None:
            return []
        previous = stored.last_run_id
        busy = previous is not None and self._in_flight(previous)
        if busy and spec.overlap == "queue":
            return []  # stays due: fired once the previous run ends
        if not self.store.claim(spec.name, stored.last_fire, new_last):
            return []  # another process fired it
        submitted: list[str] = []
        for when in times:
            facts = {"schedule": spec.name, "tenant": spec.tenant, "time": stamp(when)}
            if busy and spec.overlap == "skip":
                self.audit.append(
                    "schedule_skipped", {**facts, "run_id": previous, "reason": "previous run in flight"}
                )
                continue
            if busy and spec.overlap == "cancel" and previous is not None:
                self.runs.get(previous).handle.cancel()
            request = RunRequest(
                path=spec.path,
                pipeline=spec.pipeline,
                overrides=overrides_at(spec, when),
                tenant=spec.tenant,
                priority=spec.priority,
                inputs=spec.inputs,
            )
            try:
                served, _ = self.runs.submit(request, token=f"schedule:{spec.name}")
            except HeadraceError as exc:
                self.audit.append("schedule_failed", {**facts, "reason": str(exc)})
                continue
            run_id = served.handle.run_id
            self.store.ran(spec.name, run_id)
            self.audit.append("schedule_fired", {**facts, "run_id": run_id})
            submitted.append(run_id)
        return submitted

    def _in_flight(self, run_id: str) -> bool:
        try:
            return not self.runs.get(run_id).handle.done()
        except UnknownRun:
            return False
