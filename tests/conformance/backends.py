"""The checkpoint stores the conformance suite runs against, and how a test reaches into each one.

A backend knows how to make a store, reopen it (a new object on the same location), measure the bytes
it holds, and tamper with one stored step, so the suite can check corruption handling without knowing
any store's layout.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.graph.checkpoints import CheckpointStore, FsspecStore, MemoryStore, SqliteStore
from engine.graph.checkpoints._core import StoreCore


@dataclass
class Backend:
    """One kind of store, made fresh for a test."""

    name: str
    make: Callable[[], CheckpointStore]
    url: str = ""  # for open_store in a child process; "" when the store cannot outlive its process
    durable: bool = True  # a new object on the same location sees what the old one wrote

    def reopen(self, store: CheckpointStore) -> CheckpointStore:
        """A new store object on the same location (the old one is closed)."""
        store.close()
        return self.make()


def backend(name: str, tmp_path: Path) -> Backend:
    """The backend called ``name``, located under ``tmp_path``."""
    if name == "memory":
        return Backend(name, MemoryStore, durable=False)
    if name == "sqlite":
        path = tmp_path / "runs.db"
        return Backend(name, lambda: SqliteStore(path), url=f"sqlite:///{path}")
    if name == "fsspec-local":
        root = tmp_path / "store"
        return Backend(name, lambda: FsspecStore(str(root)), url=str(root))
    if name == "fsspec-memory":
        url = f"memory://conformance-{uuid.uuid4().hex}"
        return Backend(name, lambda: FsspecStore(url))
    raise ValueError(name)


BACKENDS = ["memory", "sqlite", "fsspec-local", "fsspec-memory"]


def tamper(store: CheckpointStore, run_id: str, step: int, how: str) -> None:
    """Damage one stored step: ``garbage`` bytes, or a ``future`` format version."""
    if isinstance(store, MemoryStore):
        first = _first(store, run_id)
        stored = store._steps[run_id]
        stored[step - first] = b"{not json" if how == "garbage" else _future(stored[step - first])
    elif isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        column = "delta = '{not json'" if how == "garbage" else "format = 99"
        db.execute(f"UPDATE steps SET {column} WHERE run_id = ? AND step = ?", (run_id, step))
        db.commit()
        db.close()
    elif isinstance(store, FsspecStore):
        path = store._log_file(run_id)
        lines = store._fs.cat_file(path).split(b"\n")
        index = step - _first(store, run_id)
        lines[index] = b"{not json" if how == "garbage" else _future(lines[index])
        store._fs.pipe_file(path, b"\n".join(lines))
        store._last.pop(run_id, None)
    else:
        raise TypeError(type(store))


def stored_bytes(store: CheckpointStore) -> int:
    """How many bytes the store holds (the file after a WAL checkpoint, the files, or the records)."""
    if isinstance(store, MemoryStore):
        return sum(len(b) for steps in store._steps.values() for b in steps) + sum(
            len(b) for b in store._runs.values()
        )
    if isinstance(store, SqliteStore):
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Path(store.path).stat().st_size
    if isinstance(store, FsspecStore):
        return int(store._fs.du(store._root, total=True))
    raise TypeError(type(store))


def raw_format(store: CheckpointStore, run_id: str, step: int) -> int:
    """The format version as stored, read past the store's own decoding."""
    if isinstance(store, MemoryStore):
        return int(json.loads(store._steps[run_id][step - _first(store, run_id)])["format"])
    if isinstance(store, SqliteStore):
        row = store._db.execute("SELECT format FROM steps WHERE run_id = ? AND step = ?", (run_id, step))
        return int(row.fetchone()[0])
    if isinstance(store, FsspecStore):
        lines = store._fs.cat_file(store._log_file(run_id)).split(b"\n")
        return int(json.loads(lines[step - _first(store, run_id)])["format"])
    raise TypeError(type(store))


def _first(store: StoreCore, run_id: str) -> int:
    run = store.get_run(run_id)
    assert run is not None
    return 0 if run.parent is None else run.parent[1] + 1


def _future(line: bytes) -> bytes:
    obj = json.loads(line)
    obj["format"] = 99
    return json.dumps(obj).encode()
