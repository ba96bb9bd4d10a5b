"""The checkpoint encoding (JSON only, versioned, never pickle) and how a URL picks a store."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import engine.graph.checkpoints as checkpoints
from engine.errors import HeadraceError
from engine.graph.checkpoints import (
    CheckpointConflict,
    CheckpointCorrupt,
    CheckpointError,
    FsspecStore,
    MemoryStore,
    NotJSON,
    RunNotFound,
    RunRecord,
    SqliteStore,
    StepRecord,
    decode,
    default_store_url,
    encode,
    open_store,
)


def test_public_api_is_pinned() -> None:
    assert sorted(checkpoints.__all__) == sorted(
        [
            "FORMAT",
            "INPUT_NODE",
            "JSON",
            "UPDATE_NODE",
            "CheckpointConflict",
            "CheckpointCorrupt",
            "CheckpointError",
            "CheckpointStore",
            "FsspecStore",
            "MemoryStore",
            "NotJSON",
            "RunNotFound",
            "RunRecord",
            "RunStatus",
            "SqliteStore",
            "StepRecord",
            "decode",
            "default_store_url",
            "encode",
            "open_store",
            "store_location",
        ]
    )


def test_errors_are_headrace_errors() -> None:
    for cls in (CheckpointConflict, CheckpointCorrupt, RunNotFound, NotJSON):
        assert issubclass(cls, CheckpointError) and issubclass(cls, HeadraceError)
    assert issubclass(NotJSON, TypeError)
    assert pickle.loads(pickle.dumps(RunNotFound("r1"))).run_id == "r1"  # crosses Ray processes


def test_records_round_trip_as_compact_json() -> None:
    run = RunRecord("r1", "g", "h", 12.5, "interrupted", parent=("r0", 3), meta={"tenant": "ü"})
    step = StepRecord("r1", 4, "node", {"a": [1, {"b": None}]}, ("x", "y"), 13.0, {"sends": []})
    assert decode(encode(run)) == run
    assert decode(encode(step)) == step
    data = encode(step)
    assert b": " not in data and b", " not in data and "ü".encode() in encode(run)  # compact, UTF-8
    assert b'"format":1' in data


def test_tuples_become_lists() -> None:
    step = StepRecord("r1", 0, "n", {"pair": (1, 2)}, (), 0.0)
    decoded = decode(encode(step))
    assert isinstance(decoded, StepRecord) and decoded.delta == {"pair": [1, 2]}


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"x": float("inf")}, r"delta\.x is inf: JSON has no NaN"),
        ({"a": [{"b": {1.5}}]}, r"delta\.a\[0\]\.b is a set"),
        ({"odd key": object()}, r"delta\['odd key'\] is a object"),
        ({"k": {(1, 2): 3}}, r"delta\.k has the key \(1, 2\) of type tuple"),
    ],
)
def test_non_json_values_name_their_path(delta: dict[str, object], message: str) -> None:
    with pytest.raises(NotJSON, match=message):
        encode(StepRecord("r1", 0, "n", delta, (), 0.0))


def test_decoding_refuses_what_it_cannot_trust() -> None:
    evil = pickle.dumps(StepRecord("r1", 0, "n", {}, (), 0.0))
    with pytest.raises(CheckpointCorrupt, match="not valid JSON"):
        decode(evil, where="evil.bin")
    with pytest.raises(CheckpointCorrupt, match="unknown checkpoint format 2"):
        decode(encode(StepRecord("r1", 0, "n", {}, (), 0.0, format=2)), where="x")
    with pytest.raises(CheckpointCorrupt, match=r"run 'r1', step 0\): malformed step record \(missing field"):
        decode(b'{"kind":"step","format":1,"run_id":"r1","step":0}', where="f.jsonl line 1")
    with pytest.raises(CheckpointCorrupt, match="expected list, found str"):
        decode(
            b'{"kind":"step","format":1,"run_id":"r","step":0,"node":"n","delta":{},"next":"x","created_at":0}',
            where="x",
        )
    with pytest.raises(CheckpointCorrupt, match="unknown record kind"):
        decode(b'{"kind":"pickle"}', where="x")


def test_open_store_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store("sqlite:///rel/runs.db")
    assert isinstance(relative, SqliteStore) and (tmp_path / "rel" / "runs.db").exists()
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore) and (tmp_path / "abs.db").exists()
    assert isinstance(open_store(str(tmp_path / "bare.sqlite")), SqliteStore)
    assert isinstance(open_store(str(tmp_path / "folder")), FsspecStore)
    assert isinstance(open_store("file://" + str(tmp_path / "f2")), FsspecStore)
    with pytest.raises(ValueError, match="bad SQLite URL"):
        open_store("sqlite://host/x.db")
    for store in (relative, absolute):
        store.close()


def test_default_store_url() -> None:
    assert default_store_url({"HEADRACE_HOME": "/srv/hr"}) == "sqlite:////srv/hr/runs.db"
    assert default_store_url({"XDG_DATA_HOME": "/xdg"}) == "sqlite:////xdg/headrace/runs.db"
    home = str(Path.home())
    assert (
        default_store_url({"XDG_DATA_HOME": "relative"}) == f"sqlite:///{home}/.local/share/headrace/runs.db"
    )
    assert default_store_url({}) == f"sqlite:///{home}/.local/share/headrace/runs.db"


def test_fsspec_log_cuts_a_torn_tail(tmp_path: Path) -> None:
    store = FsspecStore(str(tmp_path))
    store.create_run(RunRecord("r1", "g", "h", 0.0, "running"))
    for n in range(3):
        store.append(StepRecord("r1", n, "n", {"n": n}, (), 0.0))
    log = tmp_path / "runs" / "r1" / "steps.jsonl"
    log.write_bytes(log.read_bytes() + b'{"kind":"step","format":1,"run_id":"r1","st')  # killed mid-write
    reopened = FsspecStore(str(tmp_path))
    assert [s.step for s in reopened.steps("r1")] == [0, 1, 2]
    reopened.append(StepRecord("r1", 3, "n", {"n": 3}, (), 0.0))
    assert [s.step for s in FsspecStore(str(tmp_path)).steps("r1")] == [0, 1, 2, 3]
    assert log.read_bytes().count(b"\n") == 4


def test_fsspec_objects_layout(tmp_path: Path) -> None:
    """Filesystems that cannot append (object stores) get one object per step."""
    store = FsspecStore(str(tmp_path), layout="objects")
    store.create_run(RunRecord("r1", "g", "h", 0.0, "running"))
    store.append_many([StepRecord("r1", n, "n", {"n": n}, (), 0.0) for n in range(3)])
    assert sorted(p.name for p in (tmp_path / "runs" / "r1" / "steps").iterdir()) == [
        "000000000.json",
        "000000001.json",
        "000000002.json",
    ]
    assert [s.step for s in FsspecStore(str(tmp_path)).steps("r1")] == [0, 1, 2]  # read in any layout
    with pytest.raises(CheckpointConflict):
        store.append(StepRecord("r1", 2, "n", {}, (), 0.0))


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "new.db")
    db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(CheckpointCorrupt, match="schema version 9 is newer"):
        SqliteStore(tmp_path / "new.db")


def test_closed_store_says_so(tmp_path: Path) -> None:
    for store in (MemoryStore(), SqliteStore(tmp_path / "c.db"), FsspecStore(str(tmp_path / "fs"))):
        store.close()
        with pytest.raises(CheckpointError, match="closed"):
            store.get_run("r1")
