"""Run records: every run's append-only event log, and the views people read from it.

    store = open_records("sqlite:///runs.db")     # the runs store; also a folder, s3://..., memory://
    recorder = Recorder(store, run_id); recorder.emit("run_started", pipeline=...); recorder.close()
    store.list_runs(status="failed"); view = RunView.of(store.events(run_id))

The records live in the same store as state-graph checkpoints (``--store``/``$HEADRACE_CHECKPOINTS``,
else ``runs.db`` under ``$HEADRACE_HOME``): SQLite by default, files on any fsspec filesystem otherwise.
"""

from __future__ import annotations

import threading

from engine.records.base import RecordsError, RecordStore
from engine.records.events import EVENT_KINDS, Event, EventKind, RecordStatus, RunHeader
from engine.records.recorder import Recorder
from engine.records.stores import FsspecRecords, MemoryRecords, SqliteRecords
from engine.records.view import NodeView, RunView

__all__ = [
    "EVENT_KINDS",
    "Event",
    "EventKind",
    "FsspecRecords",
    "MemoryRecords",
    "NodeView",
    "RecordStatus",
    "RecordStore",
    "Recorder",
    "RecordsError",
    "RunHeader",
    "RunView",
    "SqliteRecords",
    "open_records",
]

_named: dict[str, MemoryRecords] = {}
_named_lock = threading.Lock()


def open_records(url: str) -> RecordStore:
    """The record store at a runs-store URL, spelled as for :func:`engine.graph.checkpoints.open_store`:
    ``sqlite:///x.db`` or a path ending in ``.db``, a folder or fsspec URL, ``memory://NAME`` (shared
    in this process) or ``memory://`` (fresh)."""
    from engine.graph.checkpoints import store_location

    try:
        kind, where = store_location(url)
    except ValueError as exc:
        raise RecordsError(str(exc)) from None
    if kind == "memory":
        if not where:
            return MemoryRecords()
        with _named_lock:
            return _named.setdefault(where, MemoryRecords())
    return SqliteRecords(where) if kind == "sqlite" else FsspecRecords(where)
