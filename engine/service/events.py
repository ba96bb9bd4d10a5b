"""A run's event log as the service streams it: numbered events, waited on from the server's loop.

Events are appended from any thread (a run's thread, the progress ticker); readers are coroutines on
the server's event loop, woken through ``call_soon_threadsafe``. Ids count from 1, so a client that
reconnects with ``Last-Event-ID: N`` gets every event after N that is still held. Progress events are
bounded (the oldest go first); the first and the last event are always kept.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

_MAX_PROGRESS = 1000


@dataclass(frozen=True)
class Event:
    """One event: its id, its kind (``accepted``, ``progress``, ``end``) and its JSON data."""

    id: int
    kind: str
    data: dict[str, Any]


class EventLog:
    """The events of one run, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: deque[Event] = deque()
        self._next = 1
        self._waiters: set[asyncio.Future[None]] = set()
        self.ended = False

    def append(self, kind: str, data: dict[str, Any]) -> Event:
        """Add an event (thread-safe) and wake the readers; nothing is added after ``end``."""
        with self._lock:
            if self.ended:
                return self._events[-1]
            event = Event(self._next, kind, data)
            self._next += 1
            self._events.append(event)
            self.ended = kind == "end"
            if kind == "progress" and len(self._events) > _MAX_PROGRESS:
                del self._events[1]  # keep the first event (accepted); drop the oldest progress
        self._loop.call_soon_threadsafe(self._wake)
        return event

    def after(self, last_id: int) -> list[Event]:
        """The events held whose id is above ``last_id``."""
        with self._lock:
            return [e for e in self._events if e.id > last_id]

    async def wait(self, last_id: int, timeout: float) -> None:
        """Return once an event after ``last_id`` exists, or after ``timeout`` seconds."""
        with self._lock:
            if self._next - 1 > last_id:
                return
            waiter = self._loop.create_future()
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)
