"""``Recorder``: how a running run writes its record without slowing down.

The run loop calls :meth:`Recorder.emit` (a list append under a lock); a daemon thread appends what has
gathered to the store every ``interval_s`` as one batch, so a run costs a few store writes a second
however many splits it moves. A store that fails is retried at the next interval with the events kept;
the first failure is logged once, and :attr:`Recorder.problem` says what the run's summary should
report. A run is never failed by its record.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from engine.logs import get_logger, redact_data
from engine.records.base import RecordStore
from engine.records.events import Event

_log = get_logger("records")
_MAX_PENDING = 200_000  # events held while the store fails; past this the oldest pending are dropped


class Recorder:
    """Appends one run's events to ``store``, numbered on from the run's last event."""

    def __init__(self, store: RecordStore, run_id: str, *, interval_s: float = 0.5) -> None:
        self.store = store
        self.run_id = run_id
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._next = store.last_seq(run_id) + 1
        self._dropped = 0
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"records-{run_id}", daemon=True)
        self._thread.start()

    def emit(self, kind: str, node: str | None = None, at: float | None = None, /, **data: Any) -> None:
        """Record that ``kind`` happened (to ``node``) at unix time ``at`` (default: now), with ``data``."""
        data = redact_data(data)  # a secret interpolated into a field (the pipeline's name, a path...)
        with self._lock:
            stamp = time.time() if at is None else at
            self._pending.append(Event(self.run_id, self._next, stamp, kind, node, data))
            self._next += 1
            if len(self._pending) > _MAX_PENDING:
                del self._pending[0]
                self._dropped += 1

    def flush(self) -> None:
        """Write what is pending now (the calling thread waits for the store)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.store.append(batch)
        except Exception as exc:
            with self._lock:
                self._pending[:0] = batch  # keep order: these go first next time
            if self.problem is None:
                self.problem = f"the run's record could not be written: {type(exc).__name__}: {exc}"
                _log.warning("run %s: %s (retrying)", self.run_id, self.problem)

    def close(self) -> None:
        """Stop the writer thread and write the rest."""
        self._stop.set()
        self._thread.join()
        self.flush()
        if self._pending:
            _log.error(
                "run %s: %d events of its record were not written: %s",
                self.run_id,
                len(self._pending),
                self.problem,
            )
        elif self.problem is not None and not self._dropped:
            self.problem = None  # a later write caught up: nothing was lost
        if self._dropped:
            self.problem = f"{self._dropped} events of the run's record were dropped while the store failed"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
