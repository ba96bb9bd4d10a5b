"""Every record store backend behaves the same: ordered, gap-free logs, headers that follow the
events, filters, atomic batches, retention, and (for durable ones) what a new object reads back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.records import (
    Event,
    FsspecRecords,
    MemoryRecords,
    Recorder,
    RecordsError,
    RecordStore,
    RunView,
    SqliteRecords,
    open_records,
)
from engine.records.leases import LeaseHeld, LeaseKeeper

BACKENDS = ["memory", "sqlite", "fsspec-local", "fsspec-memory"]


def _maker(name: str, tmp_path: Path) -> tuple[Callable[[], RecordStore], bool]:
    """A function making the store (a new object on the same place each call) and whether it lasts."""
    if name == "memory":
        store = MemoryRecords()
        return (lambda: store), False
    if name == "sqlite":
        return (lambda: SqliteRecords(tmp_path / "runs.db")), True
    if name == "fsspec-local":
        return (lambda: FsspecRecords(str(tmp_path / "store"))), True
    url = f"memory://records-{uuid.uuid4().hex}"
    return (lambda: FsspecRecords(url)), True


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], RecordStore]:
    return _maker(request.param, tmp_path)[0]


def started(run_id: str, seq: int = 0, at: float = 100.0, **data: object) -> Event:
    fields = {"pipeline": "p", "tenant": "t", "kind": "dataflow", **data}
    return Event(run_id, seq, at, "run_started", None, fields)


def test_a_log_reads_back_in_order_and_the_header_follows_it(make: Callable[[], RecordStore]) -> None:
    store = make()
    store.append([started("r1"), Event("r1", 1, 101.0, "node_started", "a", {})])
    header = store.header("r1")
    assert header is not None and header.status == "running" and header.updated_at == 101.0
    store.append(
        [Event("r1", 2, 105.0, "run_finished", None, {"status": "failed", "error": "x", "cost_usd": 1.5})]
    )
    header = store.header("r1")
    assert header is not None
    assert (header.status, header.error, header.cost_usd, header.finished_at) == ("failed", "x", 1.5, 105.0)
    assert [e.kind for e in store.events("r1")] == ["run_started", "node_started", "run_finished"]
    assert [e.node for e in store.events("r1", kinds={"node_started"})] == ["a"]
    assert store.last_seq("r1") == 2 and store.last_seq("other") == -1


def test_a_gap_a_repeat_or_a_log_without_run_started_is_refused_whole(
    make: Callable[[], RecordStore],
) -> None:
    store = make()
    with pytest.raises(RecordsError, match="must begin with run_started"):
        store.append([Event("r1", 0, 1.0, "node_started", "a", {})])
    store.append([started("r1")])
    with pytest.raises(RecordsError, match="does not follow"):
        store.append([Event("r1", 2, 2.0, "retry", "a", {})])
    with pytest.raises(RecordsError, match="does not follow"):
        store.append([Event("r1", 0, 2.0, "retry", "a", {})])
    with pytest.raises(RecordsError, match="unknown event kind"):
        store.append([Event("r1", 1, 2.0, "nonsense", None, {})])
    # a batch with one bad run writes nothing of the good one either
    with pytest.raises(RecordsError):
        store.append([started("r2"), Event("r1", 5, 2.0, "retry", "a", {})])
    assert store.header("r2") is None and store.last_seq("r1") == 0
    with pytest.raises(RecordsError, match="no run nope"):
        store.events("nope")


def test_list_filters_and_orders_newest_first(make: Callable[[], RecordStore]) -> None:
    store = make()
    store.append([started("a", at=10.0, pipeline="p1", tenant="x")])
    store.append([started("b", at=20.0, pipeline="p2", tenant="y")])
    store.append([started("c", at=30.0, pipeline="p1", tenant="y")])
    store.append([Event("c", 1, 31.0, "run_finished", None, {"status": "succeeded"})])
    assert [h.run_id for h in store.list_runs()] == ["c", "b", "a"]
    assert [h.run_id for h in store.list_runs(pipeline="p1")] == ["c", "a"]
    assert [h.run_id for h in store.list_runs(tenant="y")] == ["c", "b"]
    assert [h.run_id for h in store.list_runs(status="running")] == ["b", "a"]
    assert [h.run_id for h in store.list_runs(since=15.0, until=30.0)] == ["b"]
    assert [h.run_id for h in store.list_runs(limit=1)] == ["c"]
    store.delete(["b", "missing"])
    assert [h.run_id for h in store.list_runs()] == ["c", "a"] and store.header("b") is None


def test_a_resumed_run_continues_its_log(make: Callable[[], RecordStore]) -> None:
    store = make()
    store.append([started("r"), Event("r", 1, 102.0, "run_finished", None, {"status": "failed"})])
    store.append([started("r", seq=2, at=200.0, resume_of="r")])
    header = store.header("r")
    assert header is not None and header.status == "running" and header.started_at == 100.0
    assert RunView.of(store.events("r")).attempts == 2


@pytest.mark.parametrize("name", ["sqlite", "fsspec-local", "fsspec-memory"])
def test_a_new_store_object_reads_what_the_recorder_wrote(name: str, tmp_path: Path) -> None:
    make, durable = _maker(name, tmp_path)
    assert durable
    recorder = Recorder(make(), "run-1", interval_s=0.01)
    recorder.emit("run_started", None, pipeline="p", tenant="t", kind="dataflow")
    for i in range(50):
        recorder.emit("batch_committed", "sink", split=i, rows={"sink": i})
    recorder.close()
    assert recorder.problem is None
    again = make()
    events = again.events("run-1")
    assert [e.seq for e in events] == list(range(51))
    assert RunView.of(events).nodes["sink"].rows == sum(range(50))
    # a second recorder on the same run numbers on from where the first stopped
    more = Recorder(again, "run-1", interval_s=10)
    more.emit("run_finished", None, status="succeeded")
    more.close()
    assert make().last_seq("run-1") == 51


def test_a_lease_has_one_owner_until_it_lapses_or_is_released(make: Callable[[], RecordStore]) -> None:
    store = make()
    assert store.lease("output:/x") is None
    first = store.claim("output:/x", "a", 60.0)
    assert first.owner == "a" and first.expires_at > time.time() + 50
    assert store.claim("output:/x", "b", 60.0).owner == "a"  # refused: a holds it
    renewed = store.claim("output:/x", "a", 120.0)
    assert renewed.owner == "a" and renewed.expires_at >= first.expires_at
    store.release("output:/x", "b")  # not b's to give up
    assert make().lease("output:/x") == renewed
    store.release("output:/x", "a")
    assert store.lease("output:/x") is None
    assert store.claim("output:/x", "b", 60.0).owner == "b"
    # a lease whose time ran out goes to the next owner
    assert store.claim("run:r", "a", 0.001).owner == "a"
    time.sleep(0.01)
    assert store.claim("run:r", "b", 60.0).owner == "b"


def test_a_running_run_whose_lease_lapsed_is_listed_died(make: Callable[[], RecordStore]) -> None:
    store = make()
    store.append([started("old", at=10.0)])  # no lease at all (written before leases): still running
    store.append([started("live", at=20.0)])
    store.append([started("dead", at=30.0)])
    store.append(
        [started("done", at=40.0), Event("done", 1, 41.0, "run_finished", None, {"status": "failed"})]
    )
    assert store.claim("run:live", "a", 60.0).owner == "a"
    assert store.claim("run:dead", "b", 0.001).owner == "b"
    assert store.claim("run:done", "c", 0.001).owner == "c"
    time.sleep(0.01)
    statuses = {h.run_id: h.status for h in make().list_runs()}
    assert statuses == {"old": "running", "live": "running", "dead": "died", "done": "failed"}
    assert [h.run_id for h in store.list_runs(status="died")] == ["dead"]
    assert [h.run_id for h in store.list_runs(status="running")] == ["live", "old"]
    assert [h.run_id for h in store.list_runs(status="running", limit=1)] == ["live"]
    header = make().header("dead")
    assert header is not None and header.status == "died"
    store.delete(["dead"])
    assert store.lease("run:dead") is None


def test_a_lease_of_a_process_of_this_host_that_is_gone_has_lapsed(make: Callable[[], RecordStore]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = make()
    mine = store.claim("run:r", f"{socket.gethostname()}:{gone.pid}:t", 3600.0)
    assert mine.lapsed()
    assert store.claim("run:r", f"{socket.gethostname()}:{os.getpid()}:u", 3600.0).owner.endswith(":u")


def test_a_lease_keeper_renews_and_refuses_and_gives_up(make: Callable[[], RecordStore]) -> None:
    store = make()
    keeper = LeaseKeeper(store.claim, store.release, ttl_s=0.6)
    first = keeper.claim("output:/y")
    other = LeaseKeeper(store.claim, store.release, ttl_s=0.6)
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        other.claim("output:/y")
    time.sleep(1.0)  # past the first lease's time: the keeper renewed it
    held = store.lease("output:/y")
    assert held is not None and held.owner == keeper.owner and held.expires_at > first.expires_at
    keeper.close()
    assert store.lease("output:/y") is None
    other.claim("output:/y")
    other.close()


def test_a_failing_store_loses_nothing_once_it_recovers() -> None:
    class Flaky(MemoryRecords):
        fail = True

        def append(self, events: list[Event]) -> None:  # type: ignore[override]
            if self.fail:
                raise OSError("disk full")
            super().append(events)

    store = Flaky()
    recorder = Recorder(store, "r", interval_s=3600)
    recorder.emit("run_started", None, pipeline="p")
    recorder.flush()
    assert recorder.problem is not None and "disk full" in recorder.problem
    recorder.emit("run_finished", None, status="succeeded")
    store.fail = False
    recorder.close()
    assert recorder.problem is None  # the later write caught up
    assert [e.kind for e in store.events("r")] == ["run_started", "run_finished"]


def test_open_records_reads_the_urls_the_checkpoint_store_reads(tmp_path: Path) -> None:
    assert isinstance(open_records(f"sqlite:///{tmp_path}/a.db"), SqliteRecords)
    assert isinstance(open_records(str(tmp_path / "b.sqlite")), SqliteRecords)
    assert isinstance(open_records(str(tmp_path / "folder")), FsspecRecords)
    assert open_records("memory://shared") is open_records("memory://shared")
    assert open_records("memory://") is not open_records("memory://")
    with pytest.raises(RecordsError, match="bad SQLite URL"):
        open_records("sqlite://relative.db")
