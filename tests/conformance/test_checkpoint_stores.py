"""One suite every checkpoint store passes: memory, SQLite, fsspec on a folder and on ``memory://``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.graph.checkpoints import (
    FORMAT,
    CheckpointConflict,
    CheckpointCorrupt,
    CheckpointStore,
    NotJSON,
    RunNotFound,
    RunRecord,
    StepRecord,
    open_store,
)
from tests.conformance.backends import BACKENDS, Backend, backend, raw_format, stored_bytes, tamper

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend(request.param, tmp_path)


@pytest.fixture
def store(kind: Backend) -> Iterator[CheckpointStore]:
    s = kind.make()
    yield s
    s.close()


def run(
    run_id: str, *, age: float = 0.0, status: str = "running", parent=None, graph: str = "g"
) -> RunRecord:
    return RunRecord(run_id, graph, "hash-1", time.time() - age, status, parent=parent)  # type: ignore[arg-type]


def step(run_id: str, n: int, value: object = None, node: str = "work") -> StepRecord:
    return StepRecord(run_id, n, node, {"v": n if value is None else value}, ("work",), time.time())


def fill(store: CheckpointStore, run_id: str, upto: int, *, start: int = 0, tag: str = "") -> None:
    for n in range(start, upto + 1):
        store.append(step(run_id, n, f"{tag}{n}" if tag else None))


def values(steps: list[StepRecord]) -> list[tuple[str, int, object]]:
    return [(s.run_id, s.step, s.delta["v"]) for s in steps]


# -- runs ------------------------------------------------------------------------------------------


def test_create_get_list_and_status(store: CheckpointStore) -> None:
    store.create_run(run("old", age=30, graph="a"))
    store.create_run(run("mid", age=20, graph="b", status="succeeded"))
    store.create_run(run("new", age=10, graph="a"))
    got = store.get_run("old")
    assert got is not None and got.graph == "a" and got.graph_hash == "hash-1" and got.status == "running"
    assert store.get_run("nope") is None
    assert [r.run_id for r in store.list_runs()] == ["new", "mid", "old"]  # newest first
    assert [r.run_id for r in store.list_runs(graph="a")] == ["new", "old"]
    assert [r.run_id for r in store.list_runs(status="succeeded")] == ["mid"]
    assert [r.run_id for r in store.list_runs(limit=1)] == ["new"]

    store.set_status("old", "interrupted", {"interrupt": {"node": "review"}})
    store.set_status("old", "failed", {"error": "boom"})
    after = store.get_run("old")
    assert after is not None and after.status == "failed"
    assert dict(after.meta) == {"interrupt": {"node": "review"}, "error": "boom"}  # merged, not replaced


def test_run_errors(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    with pytest.raises(CheckpointConflict, match="r1"):
        store.create_run(run("r1"))
    with pytest.raises(RunNotFound, match="ghost"):
        store.set_status("ghost", "failed")
    with pytest.raises(ValueError, match="status"):
        store.set_status("r1", "exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run id"):
        store.create_run(run("../escape"))
    with pytest.raises(NotJSON, match=r"meta\.tags"):
        store.create_run(RunRecord("r2", "g", "h", 0.0, "running", meta={"tags": {"a", "b"}}))
    assert store.get_run("r2") is None


# -- appending -------------------------------------------------------------------------------------


def test_append_is_contiguous(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    with pytest.raises(CheckpointConflict, match="must be 0"):
        store.append(step("r1", 1))
    fill(store, "r1", 2)
    for bad in (2, 4, 0):  # a repeat, a gap, a rewrite of history
        with pytest.raises(CheckpointConflict, match="must be 3"):
            store.append(step("r1", bad))
    with pytest.raises(RunNotFound, match="ghost"):
        store.append(step("ghost", 0))
    assert [s.step for s in store.steps("r1")] == [0, 1, 2]
    last = store.last_step("r1")
    assert last is not None and last.step == 2


def test_append_many_is_one_transaction(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    store.create_run(run("r2"))
    fill(store, "r1", 1)
    # A gap in the middle of the batch: nothing of it is written, not even the valid records before it.
    with pytest.raises(CheckpointConflict, match="r1"):
        store.append_many([step("r1", 2), step("r2", 0), step("r1", 3), step("r1", 5), step("r2", 1)])
    assert [s.step for s in store.steps("r1")] == [0, 1]
    assert store.steps("r2") == []
    with pytest.raises(NotJSON, match=r"delta\.v"):
        store.append_many([step("r1", 2), step("r1", 3, value=b"bytes")])
    with pytest.raises(RunNotFound):
        store.append_many([step("r1", 2), step("ghost", 0)])
    assert [s.step for s in store.steps("r1")] == [0, 1]

    store.append_many([step("r1", 2), step("r2", 0), step("r1", 3)])
    assert [s.step for s in store.steps("r1")] == [0, 1, 2, 3]
    assert [s.step for s in store.steps("r2")] == [0]


def test_create_run_with_its_first_steps_is_one_transaction(store: CheckpointStore) -> None:
    store.create_run(run("r1"), [step("r1", 0), step("r1", 1)])
    assert [s.step for s in store.steps("r1")] == [0, 1]
    # a bad step, a gap or another run's step: neither the run nor any step is written
    with pytest.raises(NotJSON, match=r"delta\.v"):
        store.create_run(run("r2"), [step("r2", 0), step("r2", 1, value={1, 2})])
    with pytest.raises(CheckpointConflict, match="must be 1"):
        store.create_run(run("r2"), [step("r2", 0), step("r2", 2)])
    with pytest.raises(ValueError, match="own first steps"):
        store.create_run(run("r2"), [step("r1", 0)])
    with pytest.raises(CheckpointConflict, match="already exists"):
        store.create_run(run("r1"), [step("r1", 0)])
    assert store.get_run("r2") is None
    assert [s.step for s in store.steps("r1")] == [0, 1]
    store.create_run(run("fork", parent=("r1", 0)), [step("fork", 1, value="f")])
    assert values(store.steps("fork")) == [("r1", 0, 0), ("fork", 1, "f")]


def test_append_many_sets_the_status_in_the_same_transaction(store: CheckpointStore) -> None:
    store.create_run(RunRecord("r1", "g", "hash-1", time.time(), "running", meta={"tenant": "t"}))
    store.append_many([step("r1", 0), step("r1", 1)], status="interrupted", meta={"why": "pause"})
    got = store.get_run("r1")
    assert got is not None and got.status == "interrupted"
    assert dict(got.meta) == {"tenant": "t", "why": "pause"}
    with pytest.raises(CheckpointConflict, match="must be 2"):  # nothing written, status kept
        store.append_many([step("r1", 5)], status="succeeded")
    with pytest.raises(ValueError, match="one run"):
        store.append_many([step("r1", 2), step("r2", 0)], status="succeeded")
    with pytest.raises(ValueError, match="status"):
        store.append_many([step("r1", 2)], status="exploded")  # type: ignore[arg-type]
    after = store.get_run("r1")
    assert after is not None and after.status == "interrupted"
    assert [s.step for s in store.steps("r1")] == [0, 1]
    store.append_many([step("r1", 2)], status="succeeded")
    done = store.get_run("r1")
    assert (
        done is not None and done.status == "succeeded" and dict(done.meta) == {"tenant": "t", "why": "pause"}
    )
    assert [s.step for s in store.steps("r1")] == [0, 1, 2]


def test_steps_round_trip_and_upto(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    record = StepRecord(
        "r1",
        0,
        "__input__",
        {"text": "naïve ✓", "items": [1, 2.5, None, True, {"k": []}], "nested": {"a": {"b": "c"}}},
        ("left", "right"),
        1700000000.25,
        {"sends": [{"node": "left", "arg": {"x": 1}}], "ms": 0.5},
    )
    store.append(record)
    fill(store, "r1", 4, start=1)
    assert store.steps("r1")[0] == record
    assert [s.step for s in store.steps("r1", upto=2)] == [0, 1, 2]
    assert [s.step for s in store.steps("r1", upto=99)] == [0, 1, 2, 3, 4]
    assert store.steps("r1", upto=-1) == []
    with pytest.raises(RunNotFound):
        store.steps("ghost")


def test_non_json_delta_is_refused(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    cases = [
        ({"s": {1, 2}}, r"delta\.s is a set"),
        ({"b": b"raw"}, r"delta\.b is a bytes"),
        ({"deep": [0, {"x": object()}]}, r"delta\.deep\[1\]\.x is a object"),
        ({"nan": float("nan")}, r"delta\.nan is nan"),
        ({"k": {1: "int key"}}, r"delta\.k has the key 1"),
    ]
    for delta, message in cases:
        with pytest.raises(TypeError, match=message):
            store.append(StepRecord("r1", 0, "n", delta, (), 0.0))
    assert store.steps("r1") == []


def test_format_version_is_stored(store: CheckpointStore) -> None:
    store.create_run(run("r1"))
    fill(store, "r1", 1)
    assert raw_format(store, "r1", 1) == FORMAT
    assert all(s.format == FORMAT for s in store.steps("r1"))
    with pytest.raises(ValueError, match="cannot write checkpoint format 2"):
        store.append(StepRecord("r1", 2, "n", {}, (), 0.0, format=2))


@pytest.mark.parametrize("how", ["garbage", "future"])
def test_corrupt_record_names_run_and_step(store: CheckpointStore, how: str) -> None:
    store.create_run(run("r1"))
    fill(store, "r1", 3)
    tamper(store, "r1", 2, how)
    with pytest.raises(CheckpointCorrupt) as info:
        store.steps("r1")
    message = str(info.value)
    assert "'r1'" in message and re.search(r"step[ =]2\b", message), message
    if how == "future":
        assert "format 99" in message and "newer headrace" in message


# -- forks -----------------------------------------------------------------------------------------


def test_fork_histories_follow_parents_and_diverge(store: CheckpointStore) -> None:
    store.create_run(run("root"))
    fill(store, "root", 5, tag="root-")
    store.create_run(run("f1", parent=("root", 3)))
    last = store.last_step("f1")
    assert last is not None and (last.run_id, last.step) == ("root", 3)  # a fresh fork ends at its base
    with pytest.raises(CheckpointConflict, match="must be 4"):
        store.append(step("f1", 6))
    store.append(step("f1", 4, "edit", node="__update__"))
    fill(store, "f1", 6, start=5, tag="f1-")
    store.create_run(run("f2", parent=("f1", 5)))
    fill(store, "f2", 7, start=6, tag="f2-")

    assert values(store.steps("f2")) == [
        ("root", 0, "root-0"),
        ("root", 1, "root-1"),
        ("root", 2, "root-2"),
        ("root", 3, "root-3"),
        ("f1", 4, "edit"),
        ("f1", 5, "f1-5"),
        ("f2", 6, "f2-6"),
        ("f2", 7, "f2-7"),
    ]
    assert [(s.run_id, s.step) for s in store.steps("f2", upto=4)] == [("root", n) for n in range(4)] + [
        ("f1", 4)
    ]
    # The parent's own history is untouched by its forks.
    assert values(store.steps("root"))[4:] == [("root", 4, "root-4"), ("root", 5, "root-5")]
    assert values(store.steps("f1"))[-1] == ("f1", 6, "f1-6")


def test_fork_needs_an_existing_base(store: CheckpointStore) -> None:
    store.create_run(run("root"))
    fill(store, "root", 2)
    with pytest.raises(RunNotFound, match="ghost"):
        store.create_run(run("f", parent=("ghost", 0)))
    with pytest.raises(CheckpointConflict, match="no step 7"):
        store.create_run(run("f", parent=("root", 7)))
    assert store.get_run("f") is None


def test_delete_refuses_dependents_unless_cascade(store: CheckpointStore) -> None:
    store.create_run(run("root"))
    fill(store, "root", 3)
    store.create_run(run("f1", parent=("root", 1)))
    store.create_run(run("f2", parent=("f1", 1)))
    store.create_run(run("other"))
    with pytest.raises(CheckpointConflict, match="'f1' forks from it"):
        store.delete_run("root")
    with pytest.raises(RunNotFound):
        store.delete_run("ghost")
    store.delete_run("f2")
    assert store.get_run("f2") is None
    store.create_run(run("f2", parent=("f1", 1)))
    store.delete_run("root", cascade=True)
    assert [r.run_id for r in store.list_runs()] == ["other"]
    with pytest.raises(RunNotFound):
        store.steps("root")
    store.create_run(run("root"))  # the id is free again, with an empty history
    assert store.steps("root") == []


# -- retention -------------------------------------------------------------------------------------


def test_prune_by_age_keeps_fork_parents_and_running_runs(store: CheckpointStore) -> None:
    store.create_run(run("old-a", age=1000, status="succeeded"))
    store.create_run(run("old-parent", age=900, status="failed"))
    fill(store, "old-parent", 2)
    store.create_run(run("old-running", age=800))
    store.create_run(run("young-fork", age=10, status="succeeded", parent=("old-parent", 1)))
    store.create_run(run("young", age=5, status="succeeded"))
    assert store.prune(older_than_s=500) == 1
    assert sorted(r.run_id for r in store.list_runs()) == ["old-parent", "old-running", "young", "young-fork"]
    # Once its fork is gone, the parent goes too (in the same call, children first).
    store.delete_run("young-fork")
    assert store.prune(older_than_s=500) == 1
    assert store.prune(older_than_s=500, status="running") == 1
    assert [r.run_id for r in store.list_runs()] == ["young"]


def test_prune_keep_last(store: CheckpointStore) -> None:
    for i in range(5):
        store.create_run(run(f"r{i}", age=100 - i, status="succeeded"))
    store.append(step("r0", 0))
    store.create_run(run("fork-of-r0", age=1, parent=("r0", 0)))  # running: not pruned by default
    store.create_run(run("other", age=1000, status="succeeded", graph="other"))
    assert store.prune(keep_last=2, graph="g") == 2  # r1, r2; r0 is a fork parent, r3 and r4 are kept
    assert sorted(r.run_id for r in store.list_runs()) == ["fork-of-r0", "other", "r0", "r3", "r4"]
    assert store.prune(keep_last=2, status="succeeded") == 1  # only 'other' is beyond the newest two
    # Both limits given: a run must be old *and* beyond the newest kept ones.
    assert store.prune(keep_last=0, older_than_s=10_000) == 0
    with pytest.raises(ValueError, match="older_than_s or keep_last"):
        store.prune()


# -- concurrency, durability, size -------------------------------------------------------------------


def test_threads_append_to_different_runs(store: CheckpointStore) -> None:
    errors: list[BaseException] = []

    def work(run_id: str) -> None:
        try:
            store.create_run(run(run_id))
            for n in range(150):
                if n % 3 == 2:
                    store.append_many([step(run_id, n)])
                else:
                    store.append(step(run_id, n))
                store.last_step(run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(4):
        assert [s.step for s in store.steps(f"t{i}")] == list(range(150))


def test_reopened_store_sees_everything(kind: Backend) -> None:
    if not kind.durable:
        pytest.skip("a memory store lives and dies with its object")
    store = kind.make()
    store.create_run(run("root", status="succeeded"))
    fill(store, "root", 3)
    store.create_run(run("fork", parent=("root", 2)))
    store.append(step("fork", 3, "forked"))
    store.set_status("fork", "interrupted", {"interrupt": {"value": 1}})
    store = kind.reopen(store)
    try:
        fork = store.get_run("fork")
        assert fork is not None and fork.status == "interrupted" and fork.parent == ("root", 2)
        assert values(store.steps("fork"))[-2:] == [("root", 2, 2), ("fork", 3, "forked")]
        store.append(step("fork", 4))  # and it can go on writing where the other left off
        with pytest.raises(CheckpointConflict):
            store.append(step("root", 3))
    finally:
        store.close()


def test_a_second_store_object_sees_new_steps(kind: Backend) -> None:
    if not kind.durable:
        pytest.skip("a memory store lives and dies with its object")
    writer, reader = kind.make(), kind.make()
    try:
        writer.create_run(run("live"))
        fill(writer, "live", 1)
        last = reader.last_step("live")
        assert last is not None and last.step == 1
        fill(writer, "live", 3, start=2)
        last = reader.last_step("live")  # not a value cached from the first look
        assert last is not None and last.step == 3
        assert [s.step for s in reader.steps("live")] == [0, 1, 2, 3]
    finally:
        writer.close()
        reader.close()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from engine.graph.checkpoints import RunRecord, StepRecord, open_store
    store = open_store(sys.argv[1])
    store.create_run(RunRecord("victim", "g", "h", time.time(), "running"))
    n = 0
    while True:
        store.append(StepRecord("victim", n, "work", {"n": n, "pad": "x" * 500}, ("work",), time.time()))
        n += 1
        if n == 20:
            print("appending", flush=True)
    """
)


def test_survives_sigkill_mid_append(kind: Backend) -> None:
    if not kind.url:
        pytest.skip("only stores on disk outlive a process")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind.url], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "appending"
        time.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    store = kind.make()
    try:
        history = store.steps("victim")
        assert len(history) >= 20
        assert [s.delta["n"] for s in history] == list(range(len(history)))
        store.append(step("victim", len(history)))  # a torn tail does not block the next writer
        assert len(store.steps("victim")) == len(history) + 1
    finally:
        store.close()


def test_bytes_grow_linearly_with_steps(store: CheckpointStore) -> None:
    """Each step stores only its delta (one item appended to a list), never the whole list."""
    store.create_run(run("loop"))
    sizes = {}
    for n in range(500):
        store.append(StepRecord("loop", n, "append", {"log": [f"item number {n:04d}"]}, ("append",), 0.0))
        if n + 1 in (250, 500):
            sizes[n + 1] = stored_bytes(store)
    # Full states would give ~4x (LangGraph's O(N^2)); SQLite's fixed pages pull the ratio below 2.
    assert sizes[250] < sizes[500] < 2.5 * sizes[250], sizes


def test_open_store_memory_names() -> None:
    assert open_store("memory://") is not open_store("memory://")
    named = open_store("memory://conformance-shared")
    named.create_run(run("seen"))
    assert open_store("memory://conformance-shared").get_run("seen") is not None
