"""How a run is asked to stop from outside: Ctrl-C (SIGINT) and SIGTERM end it the same way.

Kubernetes, RayJob and systemd stop a process with SIGTERM. Ray's driver turns SIGTERM into
``sys.exit(15)`` mid-call, which skipped the run's ending (recorded ``succeeded``, native stack dumps,
exit 134). While a run is driven from the main thread, :func:`sigterm_stops_run` raises
:class:`Terminated` (a ``KeyboardInterrupt``) instead, so a SIGTERM takes Ctrl-C's path: no new work
starts, committed parts stay, the run is recorded ``cancelled`` and the process exits 143 (128 + 15).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM while a run was driven: stop as for Ctrl-C."""

    signal_number = int(signal.SIGTERM)


_received: list[int] = []  # SIGTERMs seen since the run began (Ray may re-raise ours as a plain
# KeyboardInterrupt: a signal that lands inside ray.wait comes back from its C++ core as one)


def stop_signal(exc: BaseException) -> int:
    """The signal number behind a stop: 15 after a SIGTERM, else 2 (SIGINT: Ctrl-C or a cancel)."""
    if isinstance(exc, Terminated) or _received:
        return int(signal.SIGTERM)
    return int(signal.SIGINT)


@contextmanager
def sigterm_stops_run() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (nothing elsewhere: signal
    handlers belong to the main thread, and an Engine's worker threads are cancelled through it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM takes the old way out
        _received.append(signum)
        raise Terminated()

    _received.clear()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
