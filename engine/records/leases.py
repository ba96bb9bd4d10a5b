"""Leases in the runs store: one owner at a time for a run or an output folder, given up when it dies.

A lease is a row (key, owner, expires_at) that its owner renews while it lives. Keys name what is owned:
``run:<run_id>`` (the driver running or resuming that run) and ``output:<url>`` (the run writing that
folder). A claim succeeds when the key is free, held by the same owner, or its lease has *lapsed*:

- its time ran out (the owner stopped renewing: killed, out of memory, cut off), or
- its owner is a process of this host that no longer exists (so a kill -9 is seen at once on one
  machine, without waiting for the time to run out).

A run whose record says ``running`` while its ``run:`` lease has lapsed is reported ``died``.
:class:`LeaseKeeper` renews a driver's leases from a daemon thread every third of their time.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.logs import get_logger

_log = get_logger("records")

DEFAULT_TTL_S = 30.0
"""How long a lease lasts without renewal (``$HEADRACE_LEASE_SECONDS`` changes it)."""


@dataclass(frozen=True)
class Lease:
    """Who holds ``key`` until ``expires_at`` (unix time)."""

    key: str
    owner: str
    """``HOST:PID:TOKEN[:LABEL]`` of the holding process (see :func:`this_owner`)."""
    expires_at: float

    def lapsed(self, now: float | None = None) -> bool:
        """Whether the lease no longer holds: its time ran out, or its owner (on this host) is gone."""
        if (time.time() if now is None else now) >= self.expires_at:
            return True
        host, _, rest = self.owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False
        return not _alive(int(pid_text))

    def describe(self) -> str:
        """``run run-1 (pid 123 on host-a)`` (or ``pid 123 on host-a``) for error messages."""
        parts = self.owner.split(":", 3)
        if len(parts) < 3:
            return f"owner {self.owner}"
        where = f"pid {parts[1]} on {parts[0]}"
        return f"{parts[3]} ({where})" if len(parts) == 4 and parts[3] else where


class LeaseHeld(Exception):
    """A claim found a live lease of another owner."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"{lease.key} is held by {lease.describe()}")
        self.lease = lease


def this_owner(label: str = "") -> str:
    """A fresh owner name for this process: ``HOST:PID:TOKEN:LABEL`` (the label says who, e.g. a run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}:{label.replace(':', '_')}"


def lease_ttl() -> float:
    """The lease time in seconds: ``$HEADRACE_LEASE_SECONDS``, else 30."""
    try:
        return max(0.5, float(os.environ.get("HEADRACE_LEASE_SECONDS", DEFAULT_TTL_S)))
    except ValueError:
        return DEFAULT_TTL_S


def decide(current: Lease | None, key: str, owner: str, ttl_s: float, now: float) -> Lease:
    """The rule every backend applies in one transaction: the lease that holds after ``owner`` claims
    ``key`` (``owner``'s new lease, or the other owner's live one, which the caller then refuses)."""
    if current is not None and current.owner != owner and not current.lapsed(now):
        return current
    return Lease(key, owner, now + ttl_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class LeaseKeeper:
    """Holds leases for this process and renews them from a daemon thread until :meth:`close`.

    ``claim(key)`` raises :class:`LeaseHeld` when another live owner holds it. A renewal that finds its
    lease taken (it had lapsed and another owner claimed it) is logged; ``lost`` lists such keys.
    """

    def __init__(
        self,
        claim: Callable[[str, str, float], Lease],
        release: Callable[[str, str], None],
        *,
        ttl_s: float | None = None,
        label: str = "",
    ) -> None:
        self._claim = claim
        self._release = release
        self.ttl_s = lease_ttl() if ttl_s is None else ttl_s
        self.owner = this_owner(label)
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []

    def claim(self, key: str) -> Lease:
        """Take ``key`` for this process (``LeaseHeld`` when another live owner has it)."""
        lease = self._claim(key, self.owner, self.ttl_s)
        if lease.owner != self.owner:
            raise LeaseHeld(lease)
        with self._lock:
            if key not in self._keys:
                self._keys.append(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="headrace-leases", daemon=True)
                self._thread.start()
        return lease

    def close(self) -> None:
        """Stop renewing and give every lease up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            keys, self._keys = self._keys, []
        for key in keys:
            try:
                self._release(key, self.owner)
            except Exception as exc:  # the lease lapses by itself
                _log.warning("lease %s not released: %s: %s", key, type(exc).__name__, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                keys = list(self._keys)
            for key in keys:
                try:
                    lease = self._claim(key, self.owner, self.ttl_s)
                except Exception as exc:  # the store is away for a moment: try at the next beat
                    _log.warning("lease %s not renewed: %s: %s", key, type(exc).__name__, exc)
                    continue
                if lease.owner != self.owner and key not in self.lost:
                    self.lost.append(key)
                    _log.error("lease %s was taken by %s after it lapsed", key, lease.describe())
