"""A submitted run as its submitter sees it: :class:`RunHandle` (status, result, stream, cancel).

The engine (:mod:`engine.runtime.engine`) fills a handle in from its loop or a run's thread; readers in
other threads wait on an event (``result``) or a condition (``stream``), so a handle costs no lock per
step unless someone streams it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import HeadraceError

if TYPE_CHECKING:
    from engine.runtime.admission import Ticket
    from engine.runtime.engine import Engine

EngineRunStatus = Literal[
    "queued", "running", "succeeded", "failed", "budget_exceeded", "cancelled", "interrupted"
]
_STREAM_POLL_S = 0.5


class RunCancelled(HeadraceError):
    """The run was cancelled before it finished."""

    code = "cancelled"
    exit_code = 130


class RunHandle:
    """One submitted run: its id and tenant, where it stands, its result, its stream; cancel it."""

    def __init__(
        self, engine: Engine, run_id: str, tenant: str, kind: str, target: Any, inputs: Any, options: dict
    ) -> None:
        self.run_id = run_id
        self.tenant = tenant
        self._engine = engine
        self._kind = kind  # "graph": on the engine's loop; "checked": run_checked in a thread
        self._target = target
        self._name: str = getattr(getattr(target, "plan", None), "name", None) or "graph"
        """The graph's or pipeline's name (kept: the target is dropped when the run ends)."""
        self._inputs = inputs
        self._options = options
        self._status: EngineRunStatus = "queued"
        self._done = threading.Event()
        self._values: list[Any] = []
        self._live: Any = None  # a dataflow run's live RunSummary
        self._result: Any = None
        self._error: BaseException | None = None
        self._cond: threading.Condition | None = None
        self._ticket: Ticket[RunHandle] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread_id: int | None = None
        self._cancel_requested = False
        self._owner: int | None = None  # the thread of an Engine.run() call
        self._run_here = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[RunHandle], None]] = []

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, tenant={self.tenant!r}, status={self._status!r})"

    def status(self) -> EngineRunStatus:
        """``queued``, ``running``, or how the run ended."""
        return self._status

    def done(self) -> bool:
        """Whether the run has ended (any way)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The final state (state graphs) or the ``RunSummary`` (pipeline files; its ``status`` and
        ``error`` tell how it ended); raises the run's error, ``RunCancelled``, or ``TimeoutError``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id!r} is still {self._status} after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._result

    def stream(self) -> Iterator[Any]:
        """The state after each step of a graph run (from its start), or progress snapshots of a
        dataflow run (``RunSummary.as_dict()`` every half second, then the final one), until it ends."""
        if self._cond is None:
            self._cond = threading.Condition()
        cond, seen = self._cond, 0
        while True:
            if self._kind == "checked":
                if self._live is not None:
                    yield self._live.as_dict()
                if self._done.wait(_STREAM_POLL_S):
                    if self._result is not None and hasattr(self._result, "as_dict"):
                        yield self._result.as_dict()
                    return
                continue
            while seen < len(self._values):
                seen += 1
                yield self._values[seen - 1]
            if self._done.is_set() and seen == len(self._values):
                return
            with cond:
                # the timeout covers a value appended between the check above and this wait
                cond.wait(0.05)

    def progress(self) -> dict[str, Any] | None:
        """A dataflow run's live summary (``RunSummary.as_dict()``) as it stands; None before it starts
        and for a graph app's run (whose :meth:`stream` yields its states)."""
        live = self._live
        return live.as_dict() if live is not None else None

    def add_done_callback(self, callback: Callable[[RunHandle], None]) -> None:
        """Call ``callback(handle)`` once the run has ended (at once if it has), in the thread that ends
        it: keep it short and thread-safe."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self) -> bool:
        """Cancel the run: a queued run is removed, a running graph run's task is cancelled, a running
        dataflow run is interrupted (best effort). False when the run had already ended."""
        return self._engine._cancel(self)

    # -- called by the engine -----------------------------------------------------------------------

    def _push(self, value: Any) -> None:
        self._values.append(value)
        cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()

    def _finish(
        self, status: EngineRunStatus, result: Any = None, error: BaseException | None = None
    ) -> None:
        self._status, self._result, self._error = status, result, error
        self._target = self._inputs = None  # a finished run holds only its outcome
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()
        for callback in callbacks:
            callback(self)
