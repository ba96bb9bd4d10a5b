"""How many split tasks that wait on an LLM pool one driver process has in flight, over all its runs.

A task waiting in ``ray.get`` for a pool's answer gives its CPU back, so Ray starts another worker
process for the next queued task, which waits too: a hundred runs at once would hold a hundred worker
processes (~100-150 MB each) doing nothing but wait, while the pool answers a few batches at a time.
An Engine's runs therefore share one bound on such tasks per driver process, taken in turn (first come,
first served among runs that wait), so a run that just finished a task queues behind the others and one
big run cannot keep the slots. ``HEADRACE_LLM_TASKS`` sets the bound (default: 2 per CPU, plus 4).
"""

from __future__ import annotations

import os
import threading
from collections import deque

_lock = threading.Lock()
_slots: TaskSlots | None = None


class TaskSlots:
    """A counting bound whose free slots go to waiting owners in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    def take(self, owner: object) -> bool:
        """A slot for ``owner`` if one is free and no earlier owner waits; else ``owner`` waits in line."""
        with self._changed:
            first = not self._waiting or self._waiting[0] is owner
            if self.used < self.capacity and first:
                if self._waiting:
                    self._waiting.popleft()
                self.used += 1
                return True
            if owner not in self._waiting:
                self._waiting.append(owner)
            return False

    def release(self) -> None:
        """Give a slot back."""
        with self._changed:
            self.used -= 1
            self._changed.notify_all()

    def leave(self, owner: object) -> None:
        """``owner`` no longer waits (its run ended)."""
        with self._changed:
            if owner in self._waiting:
                self._waiting.remove(owner)
                self._changed.notify_all()

    def waiting(self, owner: object) -> bool:
        """Whether ``owner`` waits in line."""
        with self._changed:
            return owner in self._waiting

    def wait(self, timeout: float) -> None:
        """Sleep until a slot is given back or the line changes, at most ``timeout`` seconds."""
        with self._changed:
            self._changed.wait(timeout)


def llm_task_slots(cpus: float) -> TaskSlots:
    """This process's bound (made on first use, from ``HEADRACE_LLM_TASKS`` or the cluster's CPUs)."""
    global _slots
    with _lock:
        if _slots is None:
            configured = int(os.environ.get("HEADRACE_LLM_TASKS", "0") or 0)
            _slots = TaskSlots(configured if configured > 0 else max(4, int(2 * cpus) + 4))
        return _slots
