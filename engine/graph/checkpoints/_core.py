"""What every store does the same way, written once over a handful of storage primitives.

A backend implements the ``_``-prefixed primitives (load and write runs, read and write a run's *own*
steps, delete runs) and may override a public method where it can do better (SQLite appends with one
statement). Fork histories, conflicts, cascades and retention live here, so that the backends cannot
drift apart; ``tests/conformance`` holds every one of them to the same behaviour.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar

from engine.graph.checkpoints import _rules
from engine.graph.checkpoints.base import JSON, RunRecord, RunStatus, StatusFilter, StepRecord
from engine.graph.checkpoints.errors import CheckpointCorrupt, CheckpointError, RunNotFound
from engine.graph.checkpoints.serial import check_json

_Store = TypeVar("_Store", bound="StoreCore")


class StoreCore(ABC):
    """The shared half of every ``CheckpointStore``; see the module docstring."""

    def __init__(self) -> None:
        # Re-entrant: public methods call each other (append_many -> get_run) while holding it.
        self._lock = threading.RLock()
        self._closed = False

    # -- primitives a backend provides ---------------------------------------------------------------

    @abstractmethod
    def _where(self) -> str:
        """Where this store lives, for messages (a file, a URL)."""

    @abstractmethod
    def _load_run(self, run_id: str) -> RunRecord | None:
        """The run record, or None."""

    @abstractmethod
    def _all_runs(self) -> list[RunRecord]:
        """Every run record, in any order."""

    @abstractmethod
    def _save_run(self, run: RunRecord, *, new: bool) -> None:
        """Write a run record (``new``: it did not exist before)."""

    @abstractmethod
    def _own_steps(self, run_id: str, upto: int | None) -> list[StepRecord]:
        """The run's own steps (not its parent's), in order, up to ``upto`` included."""

    @abstractmethod
    def _own_last_number(self, run_id: str) -> int | None:
        """The number of the run's last own step, or None if it has none (cheap: called per append)."""

    @abstractmethod
    def _write_steps(self, records: Sequence[StepRecord]) -> None:
        """Store steps already checked for contiguity; all or none of them."""

    @abstractmethod
    def _delete_runs(self, run_ids: Sequence[str]) -> None:
        """Remove runs and their steps (dependents were checked by the caller)."""

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Everything inside happens as one unit; backends with real transactions override this."""
        with self._lock:
            self._check_open()
            yield

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"checkpoint store {self._where()} is closed")

    # -- runs ------------------------------------------------------------------------------------------

    def create_run(self, run: RunRecord, steps: Sequence[StepRecord] = ()) -> None:
        """Record a new run, with its first ``steps`` in the same transaction (all or none);
        ``CheckpointConflict`` if the id exists, ``RunNotFound`` for a missing parent."""
        _rules.check_run_id(run.run_id)
        _rules.check_status(run.status)
        check_json(run.meta, "meta")
        _check_steps(steps)
        _rules.check_first_steps(run, steps)  # before anything is written
        with self._transaction():
            if self._load_run(run.run_id) is not None:
                raise _rules.exists_conflict(run.run_id)
            if run.parent is not None:
                parent_id, step = run.parent
                if self._load_run(parent_id) is None:
                    raise RunNotFound(parent_id, self._where())
                base = self.steps(parent_id, upto=step)
                if not base or base[-1].step != step:
                    raise _rules.fork_base_missing(run)
            self._save_run(run, new=True)
            if steps:
                self._write_steps(steps)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if this store has no such run."""
        with self._lock:
            self._check_open()
            return self._load_run(run_id)

    def list_runs(
        self, *, status: RunStatus | None = None, graph: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs matching the filters, newest first, at most ``limit``."""
        with self._lock:
            self._check_open()
            runs = self._all_runs()
        runs = [
            r for r in runs if (status is None or r.status == status) and (graph is None or r.graph == graph)
        ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return runs[: max(limit, 0)]

    def set_status(self, run_id: str, status: RunStatus, meta: Mapping[str, JSON] | None = None) -> None:
        """Change a run's status; ``meta``'s keys are merged over the run's meta."""
        _rules.check_status(status)
        if meta:
            check_json(meta, "meta")
        with self._transaction():
            run = self._require(run_id)
            merged = {**run.meta, **meta} if meta else run.meta
            self._save_run(replace(run, status=status, meta=merged), new=False)

    # -- steps -----------------------------------------------------------------------------------------

    def append(self, record: StepRecord) -> None:
        """Add the run's next step (last + 1, or fork step + 1 for a fork's first); else a conflict."""
        self.append_many((record,))

    def append_many(
        self,
        records: Sequence[StepRecord],
        *,
        status: RunStatus | None = None,
        meta: Mapping[str, JSON] | None = None,
    ) -> None:
        """Append several steps in one transaction: all are written or, on any error, none. With
        ``status`` (all records then belong to one run), that run's status is set (``meta`` merged
        over its meta) in the same transaction, after the steps."""
        run_id = _rules.status_target(records, status)
        if run_id is None:
            return
        _check_steps(records)  # before taking the lock: a bad value fails without touching the store
        if meta:
            check_json(meta, "meta")
        with self._transaction():
            next_of: dict[str, int] = {}
            for r in records:
                if r.run_id not in next_of:
                    next_of[r.run_id] = self._next_number(r.run_id)
            _rules.plan_sequence(records, next_of)
            self._write_steps(records)
            if status is not None:
                run = self._require(run_id)
                merged = {**run.meta, **meta} if meta else run.meta
                self._save_run(replace(run, status=status, meta=merged), new=False)

    def _next_number(self, run_id: str) -> int:
        last = self._own_last_number(run_id)
        if last is not None:
            return last + 1
        return _rules.first_step(self._require(run_id))

    def steps(self, run_id: str, *, upto: int | None = None) -> list[StepRecord]:
        """The run's whole history (through its fork parents) in step order, up to ``upto`` included."""
        with self._lock:
            self._check_open()
            return self._history(self._require(run_id), upto)

    def _history(self, run: RunRecord, upto: int | None) -> list[StepRecord]:
        # A fork's chain is short (one link per fork), so plain recursion is fine.
        own = self._own_steps(run.run_id, upto)
        if run.parent is None:
            return own
        parent_id, fork_step = run.parent
        parent = self._load_run(parent_id)
        if parent is None:
            raise CheckpointCorrupt(
                f"{self._where()}: run '{run.run_id}' forks from run '{parent_id}', which is missing"
            )
        return self._history(parent, fork_step if upto is None else min(fork_step, upto)) + own

    def last_step(self, run_id: str) -> StepRecord | None:
        """The last step of the run's history (a fresh fork's is its fork step); ``None`` if empty."""
        with self._lock:
            self._check_open()
            run = self._require(run_id)
            last = self._own_last_number(run_id)
            if last is not None:
                return self._own_steps(run_id, last)[-1]
            history = self._history(run, None)
            return history[-1] if history else None

    # -- deletion and retention ------------------------------------------------------------------------

    def delete_run(self, run_id: str, *, cascade: bool = False) -> None:
        """Delete a run and its steps; refused while forks depend on it unless ``cascade`` deletes them."""
        with self._transaction():
            self._require(run_id)
            runs = self._all_runs()
            doomed = _rules.descendants(run_id, runs)
            if doomed and not cascade:
                children = [r.run_id for r in runs if r.parent is not None and r.parent[0] == run_id]
                raise _rules.dependents_conflict(run_id, children)
            self._delete_runs([*doomed, run_id])

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        keep_last: int | None = None,
        status: StatusFilter = None,
        graph: str | None = None,
    ) -> int:
        """Retention: delete old runs, never one that others fork from; returns how many were deleted.

        A run is deleted when it matches ``status`` (default: every status but ``running``) and
        ``graph``, was created more than ``older_than_s`` seconds ago, and is not among the
        ``keep_last`` newest matching runs (limits not given do not apply; at least one is required).
        """
        with self._transaction():
            doomed = _rules.prune_plan(
                self._all_runs(),
                now=time.time(),
                older_than_s=older_than_s,
                keep_last=keep_last,
                status=status,
                graph=graph,
            )
            if doomed:
                self._delete_runs(doomed)
            return len(doomed)

    def close(self) -> None:
        """Release connections and files; the store is unusable afterwards."""
        with self._lock:
            self._closed = True

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self, run_id: str) -> RunRecord:
        run = self._load_run(run_id)
        if run is None:
            raise RunNotFound(run_id, self._where())
        return run


def _check_steps(records: Sequence[StepRecord]) -> None:
    for r in records:
        _rules.check_step(r)
        check_json(r.delta, "delta")
        check_json(r.meta, "meta")
