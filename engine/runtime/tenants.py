"""Tenants: their quotas, and the ledger their runs' LLM calls reserve cost against.

Every run belongs to a tenant (``default`` unless given). A tenant's :class:`TenantQuota` bounds its
concurrent and queued runs, weighs its share of free run slots (see :mod:`engine.runtime.admission`),
and caps its LLM spend per period across all of its runs.

The cost cap is enforced where every LLM call already stops: the run's ``Ledger``. A run of a tenant
with a cost quota gets a :class:`RemoteTenant` scope; every reservation of the run's ledger also
reserves against the engine's one :class:`TenantLedgerActor`, which refuses a call that could take the
tenant past its quota. From then on the tenant is *exhausted* for the rest of the period: every
reservation of every run of that tenant is refused (they end ``budget_exceeded``, calls in flight
settle, committed parts are kept) and the engine fails the tenant's queued runs. Periods are fixed
windows of ``period_s`` seconds counted from the ledger's start; spend resets when a window rolls over.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.runtime.llm.ledger import Charge

DEFAULT_TENANT = "default"


class TenantQuota(BaseModel):
    """Limits and share of one tenant on an :class:`~engine.runtime.engine.Engine`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent_runs: int | None = Field(
        None, ge=1, description="Runs of this tenant running at once (None: only the engine's bound)."
    )
    max_queued: int | None = Field(
        None, ge=0, description="Runs of this tenant waiting at once; more are refused with EngineBusy."
    )
    max_cost_usd_per_period: float | None = Field(
        None, ge=0, description="LLM spend (USD) over all of this tenant's runs in one period."
    )
    period_s: float = Field(86_400.0, gt=0, description="Length of a cost period in seconds.")
    weight: float = Field(
        1.0, gt=0, description="Share of free run slots relative to other tenants with queued runs."
    )


@dataclass
class _Account:
    quota: float
    period: int = 0
    spent: float = 0.0
    reserved: float = 0.0
    stopped: str | None = None


class TenantLedger:
    """Spend per tenant and period; plain Python (``clock`` injectable), wrapped by the actor below."""

    def __init__(
        self, quotas: Mapping[str, TenantQuota], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._periods = {t: q.period_s for t, q in quotas.items()}
        self._accounts = {
            t: _Account(q.max_cost_usd_per_period)
            for t, q in quotas.items()
            if q.max_cost_usd_per_period is not None
        }

    def reserve(self, tenant: str, cost_usd: float) -> str | None:
        """Reserve ``cost_usd`` for one call of ``tenant``; the reason when refused (then the tenant
        stays exhausted until the period ends)."""
        account = self._account(tenant)
        if account is None:
            return None
        if account.stopped is None and account.spent + account.reserved + cost_usd > account.quota:
            account.stopped = (
                f"tenant '{tenant}' quota max_cost_usd_per_period ${account.quota:g}: used and reserved "
                f"${account.spent + account.reserved:.6g} this period, the next call may cost "
                f"${cost_usd:.6g}; the quota renews in {self.renews_in(tenant):.0f}s"
            )
        if account.stopped is not None:
            return account.stopped
        account.reserved += cost_usd
        return None

    def settle(self, tenant: str, reserved_usd: float, actual_usd: float | None) -> None:
        """Replace a reservation by the real cost (None: nothing was billed)."""
        account = self._account(tenant)
        if account is None:
            return
        account.reserved = max(0.0, account.reserved - reserved_usd)
        account.spent += actual_usd or 0.0

    def exhausted(self, tenant: str) -> str | None:
        """Why ``tenant`` may not spend any more this period, if it may not."""
        account = self._account(tenant)
        return None if account is None else account.stopped

    def spent(self, tenant: str) -> float:
        """The tenant's spend in the current period."""
        account = self._account(tenant)
        return 0.0 if account is None else account.spent

    def renews_in(self, tenant: str) -> float:
        """Seconds until the tenant's current period ends."""
        period = self._periods.get(tenant, math.inf)
        elapsed = self._clock() - self._start
        return period - (elapsed % period) if math.isfinite(period) else math.inf

    def _account(self, tenant: str) -> _Account | None:
        account = self._accounts.get(tenant)
        if account is None:
            return None
        period = int((self._clock() - self._start) // self._periods[tenant])
        if period != account.period:
            # a new window: spend and the stop reset; calls in flight keep their reservations
            account.period, account.spent, account.stopped = period, 0.0, None
        return account


class TenantLedgerActor(TenantLedger):
    """The engine's ``TenantLedger`` as a Ray actor, shared by every run's ledger."""


@dataclass(frozen=True)
class RemoteTenant:
    """A run ledger's tenant scope: reservations go to the engine's ``TenantLedgerActor``.

    Picklable (an actor handle and a name), so it travels into the run's ``LedgerActor``.
    """

    ledger: Any
    tenant: str

    @property
    def name(self) -> str:
        """How budget messages name this scope."""
        return f"tenant '{self.tenant}'"

    def reserve(self, charge: Charge) -> str | None:
        """Reserve against the tenant's quota; the reason when refused."""
        import ray

        reason: str | None = ray.get(self.ledger.reserve.remote(self.tenant, charge.cost_usd))
        return reason

    def settle(self, reserved: Charge, actual: Charge | None) -> None:
        """Settle without waiting (calls from one caller to an actor run in order)."""
        cost = None if actual is None else actual.cost_usd
        self.ledger.settle.remote(self.tenant, reserved.cost_usd, cost)


@dataclass(frozen=True)
class LocalTenant:
    """A tenant scope over an in-process ``TenantLedger`` (tests, single-process use)."""

    ledger: TenantLedger
    tenant: str

    @property
    def name(self) -> str:
        """How budget messages name this scope."""
        return f"tenant '{self.tenant}'"

    def reserve(self, charge: Charge) -> str | None:
        """Reserve against the tenant's quota; the reason when refused."""
        return self.ledger.reserve(self.tenant, charge.cost_usd)

    def settle(self, reserved: Charge, actual: Charge | None) -> None:
        """Replace the reservation by the real cost."""
        self.ledger.settle(self.tenant, reserved.cost_usd, None if actual is None else actual.cost_usd)
