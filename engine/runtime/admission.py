"""Admission control: which submitted runs start, and when. Pure bookkeeping, no Ray, no threads.

- A run is *offered*: it joins its tenant's queue, or is refused with :class:`EngineBusy` when the
  engine's queue (``max_queued``) or the tenant's (``TenantQuota.max_queued``) is full — backpressure,
  so a burst of submissions costs bounded memory.
- :meth:`Admission.take` hands out queued runs while run slots are free: the engine's
  ``max_running`` and each tenant's ``max_concurrent_runs``. Within a tenant the highest priority goes
  first, FIFO among equals. Across tenants slots go by stride scheduling (weighted fair queueing): each
  tenant has a virtual time that advances by ``1 / weight`` per run started, and the tenant with the
  smallest virtual time among those that may start a run goes next. A tenant whose queue was empty joins
  at the current virtual time, so idling earns no credit.
- :meth:`Admission.finished` frees a slot; :meth:`Admission.withdraw` removes a queued run (cancel);
  :meth:`Admission.drain` removes all of a tenant's queued runs (the tenant hit its cost quota).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from engine.errors import HeadraceError
from engine.runtime.tenants import TenantQuota

T = TypeVar("T")
TicketState = Literal["queued", "running", "withdrawn", "done"]


class EngineBusy(HeadraceError):
    """A submission was refused because the engine's (or the tenant's) queue is full."""

    code = "engine_busy"


@dataclass(eq=False)
class Ticket(Generic[T]):
    """One submitted run as admission control sees it; ``item`` is the caller's payload."""

    tenant: str
    priority: int
    seq: int
    item: T
    state: TicketState = "queued"


@dataclass
class _Tenant:
    quota: TenantQuota
    heap: list[tuple[int, int, Ticket]] = field(default_factory=list)
    queued: int = 0
    running: int = 0
    vtime: float = 0.0

    def may_start(self) -> bool:
        cap = self.quota.max_concurrent_runs
        return self.queued > 0 and (cap is None or self.running < cap)


class Admission(Generic[T]):
    """Queues per tenant, run slots, and the fair order in which queued runs start."""

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        quotas: Mapping[str, TenantQuota] | None = None,
        default_quota: TenantQuota | None = None,
    ) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be at least 1 and max_queued at least 0")
        self.max_running = max_running
        self.max_queued = max_queued
        self._quotas = dict(quotas or {})
        self._default = default_quota or TenantQuota()
        self._tenants: dict[str, _Tenant] = {}
        self._seq = itertools.count()
        self._vtime = 0.0
        self.queued = 0
        self.running = 0

    def offer(self, tenant: str, priority: int, item: T) -> Ticket[T]:
        """Queue a run, or raise :class:`EngineBusy` when a queue bound would be passed."""
        state = self._tenant(tenant)
        if self.queued >= self.max_queued:
            raise EngineBusy(
                f"the engine's queue is full ({self.queued:,} runs queued, max_queued={self.max_queued:,}); "
                "submit again once runs finish, or raise Engine(max_queued=...)"
            )
        cap = state.quota.max_queued
        if cap is not None and state.queued >= cap:
            raise EngineBusy(
                f"tenant '{tenant}' has {state.queued:,} runs queued, its quota's max_queued; submit "
                "again once its runs finish, or raise TenantQuota(max_queued=...)"
            )
        ticket = Ticket(tenant, priority, next(self._seq), item)
        if state.queued == 0:
            state.vtime = max(state.vtime, self._vtime)  # no credit for having been idle
        heapq.heappush(state.heap, (-priority, ticket.seq, ticket))
        state.queued += 1
        self.queued += 1
        return ticket

    def take(self) -> list[Ticket[T]]:
        """Queued runs that may start now (marked running), in the order they should start."""
        started: list[Ticket[T]] = []
        while self.running < self.max_running and self.queued:
            eligible = [t for t in self._tenants.values() if t.may_start()]
            if not eligible:
                break
            tenant = min(eligible, key=lambda t: t.vtime)
            ticket = self._pop(tenant)
            ticket.state = "running"
            tenant.running += 1
            self.running += 1
            self._vtime = tenant.vtime
            tenant.vtime += 1.0 / tenant.quota.weight
            started.append(ticket)
        return started

    def finished(self, ticket: Ticket[T]) -> None:
        """A running run ended: its slot is free."""
        if ticket.state != "running":
            return
        ticket.state = "done"
        self._tenants[ticket.tenant].running -= 1
        self.running -= 1

    def withdraw(self, ticket: Ticket[T]) -> bool:
        """Remove a queued run; False when it is no longer queued (running or done)."""
        if ticket.state != "queued":
            return False
        ticket.state = "withdrawn"  # its heap entry is skipped when reached
        tenant = self._tenants[ticket.tenant]
        tenant.queued -= 1
        self.queued -= 1
        if tenant.queued == 0:
            tenant.heap.clear()
        return True

    def drain(self, tenant: str) -> list[Ticket[T]]:
        """Remove and return every queued run of ``tenant``, in start order."""
        state = self._tenants.get(tenant)
        if state is None:
            return []
        out: list[Ticket[T]] = []
        while state.queued:
            ticket = self._pop(state)
            ticket.state = "withdrawn"
            out.append(ticket)
        return out

    def drain_all(self) -> list[Ticket[T]]:
        """Remove and return every queued run (the engine is closing)."""
        return [t for name in list(self._tenants) for t in self.drain(name)]

    def weight(self, tenant: str) -> float:
        """The tenant's weight (its share of free slots, and of the shared LLM pools)."""
        return self._quotas.get(tenant, self._default).weight

    def queued_of(self, tenant: str) -> int:
        """Runs of ``tenant`` waiting."""
        state = self._tenants.get(tenant)
        return 0 if state is None else state.queued

    def running_of(self, tenant: str) -> int:
        """Runs of ``tenant`` running."""
        state = self._tenants.get(tenant)
        return 0 if state is None else state.running

    def depth(self) -> dict[str, tuple[int, int]]:
        """Runs waiting and running, by tenant (the engine's metrics read it)."""
        return {name: (t.queued, t.running) for name, t in self._tenants.items()}

    def _pop(self, tenant: _Tenant) -> Ticket[T]:
        while True:
            _, _, ticket = heapq.heappop(tenant.heap)
            if ticket.state == "queued":
                tenant.queued -= 1
                self.queued -= 1
                return ticket

    def _tenant(self, name: str) -> _Tenant:
        state = self._tenants.get(name)
        if state is None:
            state = self._tenants[name] = _Tenant(self._quotas.get(name, self._default))
        return state
