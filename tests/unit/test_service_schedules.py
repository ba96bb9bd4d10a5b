"""Schedules: cron and interval fire times, catch-up after downtime (none, last, all within N), the
overlap policies, a claim that lets only one process fire, and over HTTP: created by an admin, fired with
``${schedule.time}`` in its overrides, kept across a restart of the server without firing twice."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.audit import AuditLog
from engine.service.schedules import ScheduleSpec, ScheduleStore, due, fire_times, stamp
from tests.service_live import GRAPH, live_service, wait_status

T0 = datetime(2026, 12, 8, 0, 0, tzinfo=timezone.utc).timestamp()


def _spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "s", "tenant": "a", "pipeline": GRAPH, **fields})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_cron_and_interval_fire_times() -> None:
    every_15 = _spec(cron="*/15 * * * *")
    assert [stamp(t) for t in fire_times(every_15, T0, T0, T0 + 3600)] == [
        "2026-12-08T00:15:00Z",
        "2026-12-08T00:30:00Z",
        "2026-12-08T00:45:00Z",
        "2026-12-08T01:00:00Z",
    ]
    assert fire_times(_spec(every_s=10), T0, T0 + 25, T0 + 50) == [T0 + 30, T0 + 40, T0 + 50]
    with pytest.raises(ValidationError, match="not a valid cron"):
        _spec(cron="every day")
    with pytest.raises(ValidationError, match="exactly one of `cron` and `every_s`"):
        _spec(cron="* * * * *", every_s=5)


def test_catch_up_after_downtime() -> None:
    hourly = {"cron": "0 * * * *"}
    now = T0 + 5 * 3600 + 30  # the server was down for five hours; the 05:00 fire is 30 s old
    assert due(_spec(**hourly, catch_up="none"), T0, T0, now) == ([T0 + 5 * 3600], T0 + 5 * 3600)
    late = now + 120  # now the latest fire is two minutes late: `none` drops it too
    assert due(_spec(**hourly, catch_up="none"), T0, T0, late) == ([], T0 + 5 * 3600)
    assert due(_spec(**hourly, catch_up="last"), T0, T0, late) == ([T0 + 5 * 3600], T0 + 5 * 3600)
    within = _spec(**hourly, catch_up="all", catch_up_within_s=2.5 * 3600)
    assert due(within, T0, T0, late) == ([T0 + 3 * 3600, T0 + 4 * 3600, T0 + 5 * 3600], T0 + 5 * 3600)
    assert due(within, T0, T0 + 5 * 3600, late) == ([], None)  # nothing new since the last fire


def test_only_one_claim_of_a_fire_wins(tmp_path: Path) -> None:
    first, second = ScheduleStore(tmp_path / "s.db"), ScheduleStore(tmp_path / "s.db")  # two servers
    stored = first.put(_spec(every_s=10), now=T0)
    assert first.claim("s", stored.last_fire, T0 + 10) is True
    assert second.claim("s", stored.last_fire, T0 + 10) is False  # it read the same last_fire: refused
    assert second.get("s").last_fire == T0 + 10  # type: ignore[union-attr]
    replaced = second.put(_spec(every_s=20, overlap="cancel"), now=T0 + 99)
    assert (replaced.created, replaced.last_fire, replaced.spec.every_s) == (T0, T0 + 10, 20)


def test_a_schedule_fires_with_its_time_and_survives_a_restart_without_firing_twice(home: Path) -> None:
    body = {
        "name": "ticker",
        "tenant": "a",
        "pipeline": GRAPH,
        "every_s": 1,
        "overrides": ["description=fired at ${schedule.time}"],
        "catch_up": "none",
    }
    with live_service(home) as service:
        operator = service.client(service.token("operator", "a"))
        assert operator.post("/v1/schedules", json=body).status_code == 403  # admins manage schedules
        admin_b = service.client(service.token("admin", "b"))
        assert admin_b.post("/v1/schedules", json=body).status_code == 403  # not its tenant
        admin = service.client(service.token("admin", "a"))
        created = admin.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 30
        while not (runs := operator.get("/v1/runs").json()["runs"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        first = runs[-1]["run_id"]
        done = wait_status(operator, first, "succeeded")
        assert done["submitted_by"] == "schedule:ticker"
        (override,) = done["overrides"]
        assert override.startswith("description=fired at 2026-") or override.startswith(
            "description=fired at 20"
        )
        assert "${" not in override
        assert admin.delete("/v1/schedules/ticker").status_code == 200
        fired_before = _fired(service.audit)
        admin.post("/v1/schedules", json={**body, "every_s": 3600})  # back, hourly: nothing due soon
    assert len(set(fired_before)) == len(fired_before)  # no fire time twice
    with live_service(home) as again:
        listed = again.client(again.owner).get("/v1/schedules").json()["schedules"]
        assert [(s["name"], s["every_s"]) for s in listed] == [("ticker", 3600)]
        time.sleep(1.5)
        assert _fired(again.audit) == fired_before  # the restart fired nothing again


def _fired(audit: AuditLog) -> list[str]:
    return [e["time"] for e in audit.entries() if e.get("event") == "schedule_fired"]


@pytest.mark.parametrize("overlap", ["skip", "queue", "cancel"])
def test_overlap_with_a_run_still_in_flight(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: str
) -> None:
    from engine.service.scheduler import Scheduler
    from tests.service_nodes import HOLD_ENV

    held = GRAPH.replace("service_nodes:add_one", "service_nodes:held")
    marker = tmp_path / "hold"
    marker.touch()
    monkeypatch.setenv(HOLD_ENV, str(marker))
    with live_service(home) as service:
        store = ScheduleStore(tmp_path / "own.db")  # not the server's: this test drives the ticks
        store.put(_spec(name=overlap, pipeline=held, every_s=10, overlap=overlap), now=T0)
        scheduler = Scheduler(store, service.app.state.runs, service.audit)
        owner = service.client(service.owner)
        (first,) = scheduler.tick(T0 + 10)
        wait_status(owner, first, "running")
        second = scheduler.tick(T0 + 20)
        events = [e["event"] for e in service.audit.entries() if e["event"].startswith("schedule_")]
        if overlap == "skip":
            assert second == [] and events == ["schedule_fired", "schedule_skipped"]
            assert store.get(overlap).last_fire == T0 + 20  # type: ignore[union-attr]
        elif overlap == "queue":
            assert second == [] and store.get(overlap).last_fire == T0 + 10  # type: ignore[union-attr]
            marker.unlink()
            wait_status(owner, first, "succeeded")
            (queued,) = scheduler.tick(T0 + 21)
            wait_status(owner, queued, "succeeded")
        else:
            (replacement,) = second
            marker.unlink()
            wait_status(owner, first, "cancelled")
            wait_status(owner, replacement, "succeeded")
        marker.unlink(missing_ok=True)
