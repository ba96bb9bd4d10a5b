"""Checkpoints of state-graph runs: records, the store interface, and its backends.

    store = open_store("sqlite:///runs.db")      # or "memory://", "memory://name", a folder, "s3://..."
    store.create_run(RunRecord(...)); store.append(StepRecord(...)); store.steps(run_id)

Every store keeps deltas, not full states; encodes with JSON only (never pickle); refuses a step that
does not continue its run's history; and passes ``tests/conformance/test_checkpoint_stores.py``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

from engine.graph.checkpoints.base import (
    FORMAT,
    INPUT_NODE,
    JSON,
    UPDATE_NODE,
    CheckpointStore,
    RunRecord,
    RunStatus,
    StepRecord,
)
from engine.graph.checkpoints.errors import (
    CheckpointConflict,
    CheckpointCorrupt,
    CheckpointError,
    NotJSON,
    RunNotFound,
)
from engine.graph.checkpoints.fsspec_store import FsspecStore
from engine.graph.checkpoints.memory import MemoryStore
from engine.graph.checkpoints.serial import decode, encode
from engine.graph.checkpoints.sqlite import SqliteStore

__all__ = [
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

StoreKind = Literal["memory", "sqlite", "fsspec"]
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_named_memory: dict[str, MemoryStore] = {}
_named_lock = threading.Lock()


def store_location(url: str) -> tuple[StoreKind, str]:
    """What a runs-store URL names: ``("memory", NAME)`` (``""``: a fresh store), ``("sqlite", PATH)``
    or ``("fsspec", URL)``. Checkpoints and run records (:mod:`engine.records`) read URLs the same way."""
    if url.startswith("memory://"):
        return "memory", url[len("memory://") :].strip("/")
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"bad SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////abs/path.db")
        return "sqlite", path[1:] or ":memory:"
    if "://" not in url and url.lower().endswith(_SQLITE_SUFFIXES):
        return "sqlite", os.path.expanduser(url)
    return "fsspec", url


def open_store(url: str) -> CheckpointStore:
    """The checkpoint store a URL names.

    - ``memory://`` a fresh, empty ``MemoryStore`` on every call (nothing outlives the object);
      ``memory://NAME`` the process-wide store of that name, shared by every call that names it, so a
      compiled graph and a later ``resume`` in the same process see the same runs.
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling), or a
      bare path ending in ``.db``, ``.sqlite`` or ``.sqlite3``: a ``SqliteStore``.
    - anything else (a folder, ``file://``, ``s3://``, ``gs://``...): an ``FsspecStore`` rooted there.
      (An fsspec *memory* filesystem is reached with ``FsspecStore("memory://...")`` directly.)
    """
    kind, where = store_location(url)
    if kind == "memory":
        if not where:
            return MemoryStore()
        with _named_lock:
            store = _named_memory.get(where)
            if store is None or store._closed:
                store = _named_memory[where] = MemoryStore(where)
            return store
    if kind == "sqlite":
        return SqliteStore(where)
    return FsspecStore(where)


def default_store_url(env: dict[str, str] | None = None) -> str:
    """``sqlite:///`` + ``$HEADRACE_HOME/runs.db``; without it ``$XDG_DATA_HOME/headrace`` or
    ``~/.local/share/headrace``."""
    env = dict(os.environ) if env is None else env
    home = env.get("HEADRACE_HOME")
    if not home:
        xdg = env.get("XDG_DATA_HOME")
        # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
        home = str(base / "headrace")
    return "sqlite:///" + str(Path(os.path.expanduser(home)).absolute() / "runs.db")
