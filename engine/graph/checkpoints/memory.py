"""``MemoryStore``: checkpoints in this process's memory, for tests and runs that need no resume.

Records are kept *encoded* (the same JSON bytes the other stores write), not as the objects given: a
caller that mutates a delta after appending it cannot change history, values read back are fresh
copies, and a graph that works against memory behaves the same against SQLite or a bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.graph.checkpoints import _rules
from engine.graph.checkpoints._core import StoreCore
from engine.graph.checkpoints.base import RunRecord, StepRecord
from engine.graph.checkpoints.serial import decode_run, decode_step, encode


class MemoryStore(StoreCore):
    """A ``CheckpointStore`` in dicts, guarded by one lock; ``name`` only labels it in messages."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name
        self._runs: dict[str, bytes] = {}
        # A run's own steps in order; index i holds step (first own step + i).
        self._steps: dict[str, list[bytes]] = {}
        self._first: dict[str, int] = {}

    def _where(self) -> str:
        return f"memory store '{self.name}'" if self.name else "memory store"

    def _load_run(self, run_id: str) -> RunRecord | None:
        data = self._runs.get(run_id)
        return None if data is None else decode_run(data, where=f"{self._where()}, run '{run_id}'")

    def _all_runs(self) -> list[RunRecord]:
        return [decode_run(d, where=f"{self._where()}, run '{rid}'") for rid, d in self._runs.items()]

    def _save_run(self, run: RunRecord, *, new: bool) -> None:
        self._runs[run.run_id] = encode(run)
        if new:
            self._steps[run.run_id] = []
            self._first[run.run_id] = _rules.first_step(run)

    def _own_steps(self, run_id: str, upto: int | None) -> list[StepRecord]:
        first = self._first[run_id]
        stored = self._steps[run_id]
        count = len(stored) if upto is None else max(0, min(len(stored), upto - first + 1))
        return [
            decode_step(stored[i], where=f"{self._where()}, run '{run_id}' step {first + i}")
            for i in range(count)
        ]

    def _own_last_number(self, run_id: str) -> int | None:
        stored = self._steps.get(run_id)
        if not stored:
            return None
        return self._first[run_id] + len(stored) - 1

    def _write_steps(self, records: Sequence[StepRecord]) -> None:
        encoded = [encode(r) for r in records]  # all encoded before any is stored: all or none
        for record, data in zip(records, encoded, strict=True):
            self._steps[record.run_id].append(data)

    def _delete_runs(self, run_ids: Sequence[str]) -> None:
        for rid in run_ids:
            self._runs.pop(rid, None)
            self._steps.pop(rid, None)
            self._first.pop(rid, None)
