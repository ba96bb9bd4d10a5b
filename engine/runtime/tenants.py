"""Tenants: their quotas, the cluster's one ledger service their runs' LLM calls reserve cost against, and
the CPUs their runs may use.

Every run belongs to a tenant (``default`` unless given). A tenant's :class:`TenantQuota` bounds its
concurrent and queued runs and weighs its share of free run slots on each engine (see
:mod:`engine.runtime.admission`) and of the shared LLM pools; its cost quota
(``max_cost_usd_per_period``) and CPU quota (``max_cpus``) hold across the whole cluster, over every
engine connected to it.

**One ledger service per cluster.** The ledger is a named, detached Ray actor (:class:`TenantLedgerActor`,
``headrace-ledger`` in namespace ``headrace``, obtained with ``get_if_exists`` like the rate limiter), so
every engine on a cluster, in any driver process, reserves against the same accounts. It holds every
run's cost account too (:mod:`engine.runtime.llm.accounts`): a run starts no ledger actor of its own. An
engine registers the quotas it declares when it starts and withdraws them when it closes.

- Engines open at once must declare identical cost and CPU terms for a tenant (``max_cost_usd_per_period``,
  ``period_s``, ``max_cpus``): a different declaration is refused with a :class:`~engine.errors.QuotaError`
  that names the tenant, both values and the other engine, and the engine does not start. The per-engine
  fields (``max_concurrent_runs``, ``max_queued``, ``weight``) may differ.
- Once no open engine declares a tenant, the next declaration replaces its terms. An engine whose driver
  died without closing stops counting as open the next time any engine registers that tenant (Ray
  reports the death of the driver that owns the engine's token within a few seconds).
- Accounts outlive engines: spend in the current period carries over, so closing and reopening an engine
  does not renew a quota.

**Cost.** A run of a tenant with a cost quota opens its account with the tenant's name (its
:class:`RemoteTenant` ticket); every reservation of the run's account then also reserves against the
tenant's quota, in the same process. Many runs' calls are in flight against one quota, so a call whose
worst case does not fit beside theirs *waits* for them to settle (``TenantLedger.reserve`` answers
``WAIT``); the quota refuses a call only when its settled spend plus the call's least cost would pass it.
From then on the tenant is *exhausted* for the rest of the period: every reservation of every run of
that tenant, on every engine, is refused (they end ``budget_exceeded``, calls in flight settle, committed
parts are kept) and each engine fails the tenant's queued runs as it learns of it. Periods are fixed
windows of ``period_s`` seconds counted from the ledger actor's start; spend resets when a window rolls
over.

**CPUs.** ``max_cpus`` is enforced by Ray with one placement group per tenant, owned by the ledger actor;
see :mod:`engine.runtime.tenant_cpus` for the group's shape, its lifetime (it exists, and holds its
CPUs, while an engine that declares the tenant's ``max_cpus`` is open) and what is refused. The shared
LLM pools are cluster services outside every group.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import HeadraceError, QuotaError
from engine.logs import get_logger
from engine.runtime.llm.accounts import RunAccounts
from engine.runtime.llm.blocks import LeaseReport
from engine.runtime.llm.ledger import WAIT, Charge, Wait
from engine.runtime.llm.limiter import NAMESPACE
from engine.spec.models import Budget

if TYPE_CHECKING:
    from engine.physical import Placement

DEFAULT_TENANT = "default"
LEDGER_NAME = "headrace-ledger"
_READY_WAIT_S = 10.0  # then warn that the tenant's CPUs are busy, and let its tasks wait in the group
_ALIVE_WAIT_S = 5.0
_REAP_S = 3.0
"""How often the ledger actor looks for engines whose driver died (their CPU groups are then removed)."""
_log = get_logger("runtime")


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
        None,
        ge=0,
        description="LLM spend (USD) over all of this tenant's runs in one period, on every engine of the "
        "cluster.",
    )
    period_s: float = Field(86_400.0, gt=0, description="Length of a cost period in seconds.")
    weight: float = Field(
        1.0, gt=0, description="Share of free run slots relative to other tenants with queued runs."
    )
    max_cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs this tenant's runs may use at once across the cluster, on every engine (Ray "
        "tasks and actors, held for the tenant as a placement group of one-CPU bundles while an engine "
        "declaring it is open; one task may ask for at most min(1, max_cpus) CPU). None: no cap.",
    )

    def cluster_terms(self) -> dict[str, float | None]:
        """The fields enforced across the cluster, which every engine must declare alike."""
        cost = self.max_cost_usd_per_period
        return {
            "max_cost_usd_per_period": cost,
            "period_s": None if cost is None else self.period_s,
            "max_cpus": self.max_cpus,
        }

    @property
    def on_cluster(self) -> bool:
        """Whether the quota has a cost or CPU cap (and so needs the cluster's ledger)."""
        return self.max_cost_usd_per_period is not None or self.max_cpus is not None


@dataclass
class _Account:
    quota: float
    period: int = 0
    spent: float = 0.0
    reserved: float = 0.0
    stopped: str | None = None


class TenantLedger:
    """Declared quotas and spend per tenant and period; plain Python (``clock`` injectable), wrapped by
    the actor below. ``quotas`` given here are declared by a holder named ``local``."""

    def __init__(
        self, quotas: Mapping[str, TenantQuota] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._quotas: dict[str, TenantQuota] = {}  # the terms in force, kept when their holders leave
        self._holders: dict[str, dict[str, TenantQuota]] = {}  # tenant -> holder -> declared quota
        self._periods: dict[str, float] = {}
        self._accounts: dict[str, _Account] = {}
        if quotas:
            self.register("local", quotas)

    # -- declarations ---------------------------------------------------------------------------------

    def register(self, holder: str, quotas: Mapping[str, TenantQuota]) -> None:
        """Declare ``holder``'s (an engine's) quotas. Raises ``QuotaError``, declaring none of them, when
        another holder declares different cluster-wide terms for one of the tenants."""
        for tenant, quota in quotas.items():
            terms = quota.cluster_terms()
            for other, theirs in self._holders.get(tenant, {}).items():
                if other != holder and theirs.cluster_terms() != terms:
                    raise QuotaError(_conflict(tenant, terms, other, theirs.cluster_terms()))
        for tenant, quota in quotas.items():
            holders = self._holders.setdefault(tenant, {})
            if not holders.keys() - {holder}:
                self._put_terms(tenant, quota)
            holders[holder] = quota

    def unregister(self, holder: str) -> list[str]:
        """Withdraw ``holder``'s declarations; the tenants no open holder declares any more."""
        freed = []
        for tenant, holders in self._holders.items():
            if holders.pop(holder, None) is not None and not holders:
                freed.append(tenant)
        return freed

    def holders(self, tenant: str) -> list[str]:
        """Who declares ``tenant``'s quota now."""
        return sorted(self._holders.get(tenant, {}))

    def max_cpus(self, tenant: str) -> float | None:
        """The ``max_cpus`` open holders declare for ``tenant`` (None: not declared, or no cap)."""
        if not self._holders.get(tenant):
            return None
        return self._quotas[tenant].max_cpus

    def _put_terms(self, tenant: str, quota: TenantQuota) -> None:
        self._quotas[tenant] = quota
        self._periods[tenant] = quota.period_s
        cap = quota.max_cost_usd_per_period
        account = self._accounts.get(tenant)
        if cap is None:
            self._accounts.pop(tenant, None)
        elif account is None:
            self._accounts[tenant] = _Account(cap, period=self._period_index(tenant))
        elif account.quota != cap:
            account.quota, account.stopped = cap, None  # judged again against the new cap

    # -- spend ----------------------------------------------------------------------------------------

    def reserve(self, tenant: str, cost_usd: float, least_usd: float | None = None) -> str | Wait | None:
        """Reserve ``cost_usd`` (a call's worst case) for one call of ``tenant``: None when reserved.

        ``WAIT`` when it does not fit beside the calls in flight (settled spend plus what is still
        reserved would pass the quota) but may once they settle: the caller asks again later. Refused (the
        reason) only when settled spend plus the call's least cost (``least_usd``, default ``cost_usd``)
        would pass the quota; the tenant then stays exhausted until the period ends. With nothing in
        flight, a call whose least cost fits is granted although its worst case does not (else the last
        cents of a small quota could never be spent): spend then passes the quota by at most that
        call's worst case less its real cost."""
        account = self._account(tenant)
        if account is None:
            return None
        least = cost_usd if least_usd is None else min(least_usd, cost_usd)
        if account.stopped is None and account.spent + least > account.quota:
            account.stopped = (
                f"tenant '{tenant}' quota max_cost_usd_per_period ${account.quota:g}: spent "
                f"${account.spent:.6g} this period, the next call costs at least ${least:.6g}; the quota "
                f"renews in {self.renews_in(tenant):.0f}s"
            )
        if account.stopped is not None:
            return account.stopped
        if account.spent + account.reserved + cost_usd > account.quota and account.reserved > 1e-12:
            return WAIT
        account.reserved += cost_usd
        return None

    def settle(self, tenant: str, reserved_usd: float, actual_usd: float | None) -> None:
        """Replace a reservation by the real cost (None: nothing was billed)."""
        account = self._account(tenant)
        if account is None:
            return
        account.reserved = max(0.0, account.reserved - reserved_usd)
        account.spent += actual_usd or 0.0

    def headroom(self, tenant: str) -> float:
        """Dollars left of ``tenant``'s quota this period after spend and reservations (``inf``: no
        cost quota)."""
        account = self._account(tenant)
        return math.inf if account is None else account.quota - account.spent - account.reserved

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

    def _period_index(self, tenant: str) -> int:
        return int((self._clock() - self._start) // self._periods[tenant])

    def _account(self, tenant: str) -> _Account | None:
        account = self._accounts.get(tenant)
        if account is None:
            return None
        period = self._period_index(tenant)
        if period != account.period:
            # a new window: spend and the stop reset; calls in flight keep their reservations
            account.period, account.spent, account.stopped = period, 0.0, None
        return account


def _conflict(
    tenant: str, mine: Mapping[str, float | None], other: str, theirs: Mapping[str, float | None]
) -> str:
    differ = [k for k in mine if mine[k] != theirs[k]]
    ours = ", ".join(f"{k}={_show(mine[k])}" for k in differ)
    others = ", ".join(f"{k}={_show(theirs[k])}" for k in differ)
    return (
        f"tenant '{tenant}': this engine declares {ours}, but {other}, open on the same cluster, declares "
        f"{others}; engines sharing a cluster must declare the same cost and CPU quotas for a tenant "
        "(max_cost_usd_per_period, period_s, max_cpus): use the same values, or close that engine first "
        "(one whose driver died is forgotten a few seconds later)"
    )


def _show(value: float | None) -> str:
    return "None" if value is None else f"{value:g}"


class TenantLedgerActor:
    """The cluster's one ``TenantLedger`` as a named detached Ray actor (``LEDGER_NAME``), and the owner
    of every tenant's CPU placement group (see :mod:`engine.runtime.tenant_cpus`).

    Each engine registers with a token, an object it put: once its driver is gone, getting the token
    fails with ``OwnerDiedError``, which is how a holder that died without closing is told from an open one.
    """

    def __init__(self) -> None:
        self._ledger = TenantLedger()
        self._runs = RunAccounts(lambda tenant: LocalTenant(self._ledger, tenant))
        self._tokens: dict[str, Any] = {}
        self._groups: dict[str, tuple[float, Any]] = {}  # tenant -> (max_cpus, placement group)
        self._reaper: threading.Thread | None = None

    def reap(self) -> list[str]:
        """Withdraw the declarations of engines whose driver died (their token's owner is gone), so a
        crashed engine's placement group is removed within seconds, not when another engine registers
        its tenant; returns the holders withdrawn. Asked every few seconds by the actor itself."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=_ask_to_reap, name="headrace-ledger-reaper", daemon=True)
            self._reaper.start()
        dead = [holder for holder in list(self._tokens) if not self._alive(holder)]
        for holder in dead:
            _log.warning("engine %s stopped without closing: its tenant quotas and CPUs are freed", holder)
            self.unregister(holder)
        return dead

    def register(self, holder: str, quotas: Mapping[str, TenantQuota], token: list[Any]) -> None:
        """Declare an engine's quotas (``token``: a one-item list holding its token, so it stays a
        reference); raises ``QuotaError`` when an open engine declares other terms."""
        if self._reaper is None:
            self.reap()  # starts the thread that asks for it every few seconds
        for tenant in quotas:
            for other in self._ledger.holders(tenant):
                if other != holder and not self._alive(other):
                    self.unregister(other)
        self._ledger.register(holder, quotas)
        self._tokens[holder] = token[0]

    def unregister(self, holder: str) -> None:
        """Withdraw an engine's quotas; the groups of tenants no open engine declares are removed."""
        from engine.runtime.tenant_cpus import remove_group

        self._tokens.pop(holder, None)
        for tenant in self._ledger.unregister(holder):
            entry = self._groups.pop(tenant, None)
            if entry is not None:
                remove_group(entry[1])

    def placement_group(self, tenant: str) -> Any:
        """The tenant's placement group, created on first use (``QuotaError`` if the cluster cannot
        hold it)."""
        from engine.runtime.tenant_cpus import create_group

        cpus = self._ledger.max_cpus(tenant)
        if cpus is None:
            raise QuotaError(f"tenant '{tenant}' has no max_cpus declared by an open engine on this cluster")
        entry = self._groups.get(tenant)
        if entry is None:
            held = {t: c for t, (c, _) in self._groups.items()}
            entry = self._groups[tenant] = (cpus, create_group(tenant, cpus, held))
        return entry[1]

    # -- run accounts (see engine.runtime.llm.accounts) -------------------------------------------------

    def open_run(
        self, run_id: str, run_budget: Budget | None, node_budgets: Mapping[str, Budget], tenant: str | None
    ) -> int:
        """Open a run's account (its budgets, and ``tenant`` when its tenant has a cost quota); its
        epoch, which the pools' leases name."""
        return self._runs.open(run_id, run_budget, node_budgets, tenant)

    def reserve_call(self, run_id: str, node: str, charge: Charge, holder: str | None = None) -> bool:
        """See ``RunAccounts.reserve``."""
        return self._runs.reserve(run_id, node, charge, holder)

    def settle_call(
        self,
        run_id: str,
        node: str,
        reserved: Charge,
        actual: Charge | None,
        requests: int = 1,
        holder: str | None = None,
    ) -> None:
        """See ``RunAccounts.settle``."""
        self._runs.settle(run_id, node, reserved, actual, requests, holder)

    def exchange(
        self,
        run_id: str,
        epoch: int,
        node: str,
        holder: str,
        report: LeaseReport,
        calls: int = 0,
        per_call: Charge | None = None,
    ) -> Charge | None:
        """See ``RunAccounts.exchange`` (a pool actor's lease round trip)."""
        return self._runs.exchange(run_id, epoch, node, holder, report, calls, per_call)

    def lease_stats(self) -> dict[str, float]:
        """Round trips so far (lease exchanges and per-call reservations) and what is leased out now."""
        leased = self._runs.leased()
        return {
            "exchanges": self._runs.exchanges,
            "reservations": self._runs.reservations,
            "leased_usd": leased.cost_usd,
            "leased_input_tokens": leased.input_tokens,
            "leased_output_tokens": leased.output_tokens,
        }

    def release_holder(self, holder: str) -> int:
        """See ``RunAccounts.release_holder`` (a pool actor died mid-call)."""
        return self._runs.release_holder(holder)

    def record_cached(
        self, run_id: str, node: str, requests: int, input_tokens: int, output_tokens: int
    ) -> None:
        """See ``RunAccounts.record_cached``."""
        self._runs.record_cached(run_id, node, requests, input_tokens, output_tokens)

    def record_rows(self, run_id: str, node: str, rows: int) -> None:
        """See ``RunAccounts.record_rows``."""
        self._runs.record_rows(run_id, node, rows)

    def usage(self, run_id: str) -> dict[str, dict[str, Any]]:
        """See ``RunAccounts.usage``."""
        return self._runs.usage(run_id)

    def close_run(self, run_id: str) -> dict[str, dict[str, Any]]:
        """See ``RunAccounts.close``."""
        return self._runs.close(run_id)

    def open_runs(self) -> list[str]:
        """Run ids with an open account (tests check that ended runs closed theirs)."""
        return self._runs.open_runs()

    # -- tenants' spend -------------------------------------------------------------------------------

    def reserve(self, tenant: str, cost_usd: float, least_usd: float | None = None) -> str | Wait | None:
        """See ``TenantLedger.reserve``."""
        return self._ledger.reserve(tenant, cost_usd, least_usd)

    def settle(self, tenant: str, reserved_usd: float, actual_usd: float | None) -> None:
        """See ``TenantLedger.settle``."""
        self._ledger.settle(tenant, reserved_usd, actual_usd)

    def exhausted(self, tenant: str) -> tuple[str | None, float]:
        """Why the tenant may not spend any more this period (None: it may), and when the period renews."""
        return self._ledger.exhausted(tenant), self._ledger.renews_in(tenant)

    def spent(self, tenant: str) -> float:
        """See ``TenantLedger.spent``."""
        return self._ledger.spent(tenant)

    def _alive(self, holder: str) -> bool:
        import ray

        token = self._tokens.get(holder)
        if token is None:
            return True
        try:
            ray.get(token, timeout=_ALIVE_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            return True  # slow to answer is not dead
        except ray.exceptions.ObjectLostError:  # OwnerDiedError: the engine's driver is gone
            return False
        return True


def _ask_to_reap() -> None:
    """Ask the ledger actor this thread runs in to reap dead engines, every ``_REAP_S`` seconds: the ask
    is an actor call, so the reaping itself runs in the actor's own thread, one call at a time."""
    import ray

    me = ray.get_runtime_context().current_actor
    while True:
        time.sleep(_REAP_S)
        me.reap.remote()


@dataclass(frozen=True)
class RemoteTenant:
    """A run's ticket to its tenant's cost quota on the cluster's ledger service: the run opens its
    account there under ``tenant`` (see :class:`TenantLedgerActor.open_run`)."""

    ledger: Any
    tenant: str

    @property
    def name(self) -> str:
        """How budget messages name this scope."""
        return f"tenant '{self.tenant}'"


@dataclass(frozen=True)
class LocalTenant:
    """A tenant scope over an in-process ``TenantLedger`` (tests, single-process use)."""

    ledger: TenantLedger
    tenant: str

    @property
    def name(self) -> str:
        """How budget messages name this scope."""
        return f"tenant '{self.tenant}'"

    def reserve(self, charge: Charge) -> str | Wait | None:
        """Reserve against the tenant's quota: None, ``WAIT`` or the reason it is refused."""
        return self.ledger.reserve(self.tenant, charge.cost_usd, charge.least_usd)

    def settle(self, reserved: Charge, actual: Charge | None) -> None:
        """Replace the reservation by the real cost."""
        self.ledger.settle(self.tenant, reserved.cost_usd, None if actual is None else actual.cost_usd)

    def headroom(self) -> float:
        """Dollars left of the quota (see ``TenantLedger.headroom``)."""
        return self.ledger.headroom(self.tenant)


class ClusterTenants:
    """One engine's side of the cluster's tenant ledger: it declares the engine's cost and CPU quotas,
    and gives each run its cost scope and CPU placement. Tenants without either cap cost nothing here.

    ``holder`` names the engine in other engines' conflict messages.
    """

    def __init__(self, quotas: Mapping[str, TenantQuota], holder: str) -> None:
        self.quotas = {t: q for t, q in quotas.items() if q.on_cluster}
        self.holder = holder
        self._lock = threading.Lock()
        self._ledger: Any = None
        self._token: Any = None
        self._placements: dict[str, Placement] = {}

    def connect(self) -> None:
        """Join (or start) the cluster's ledger and declare this engine's quotas, once; raises
        ``QuotaError`` when an open engine declares other terms for one of its tenants."""
        if not self.quotas or self._ledger is not None:
            return
        import ray

        with self._lock:
            if self._ledger is not None:
                return
            if not ray.is_initialized():
                raise HeadraceError(
                    "tenant cost and CPU quotas need the engine's Ray; do not pass start_ray=False"
                )
            ledger = ledger_service()
            token = ray.put(self.holder)
            _get(ledger.register.remote(self.holder, self.quotas, [token]))
            self._ledger, self._token = ledger, token

    def close(self) -> None:
        """Withdraw this engine's quotas (the groups no other open engine declares are removed)."""
        if self._ledger is None:
            return
        import ray

        try:
            ray.get(self._ledger.unregister.remote(self.holder))
        except ray.exceptions.RayError as exc:  # the ledger is gone: nothing is held any more
            _log.warning("could not withdraw the engine's tenant quotas: %s", exc)
        self._ledger = self._token = None
        self._placements.clear()

    def scope(self, tenant: str) -> RemoteTenant | None:
        """The run ledger's tenant scope when ``tenant`` has a cost quota."""
        quota = self.quotas.get(tenant)
        if quota is None or quota.max_cost_usd_per_period is None:
            return None
        self.connect()
        return RemoteTenant(self._ledger, tenant)

    def placement(self, tenant: str) -> Placement | None:
        """Where ``tenant``'s runs' tasks and actors go when it has ``max_cpus`` (creating its group on
        first use); raises ``QuotaError`` when the cluster cannot hold the group."""
        quota = self.quotas.get(tenant)
        if quota is None or quota.max_cpus is None:
            return None
        cached = self._placements.get(tenant)
        if cached is not None:
            return cached
        import ray

        from engine.runtime.tenant_cpus import group_name, placement

        self.connect()
        group = _get(self._ledger.placement_group.remote(tenant))
        ready, _ = ray.wait([group.ready()], timeout=_READY_WAIT_S)
        if not ready:
            _log.warning(
                "tenant '%s': its placement group %s (max_cpus=%g) waits for CPUs to free; its tasks wait "
                "in it until they do",
                tenant,
                group_name(tenant),
                quota.max_cpus,
            )
        return self._placements.setdefault(tenant, placement(tenant, quota.max_cpus, group))

    def exhausted(self, tenant: str) -> tuple[str, float] | None:
        """Why ``tenant`` may not spend any more, and in how many seconds its period renews."""
        import ray

        reason, renews = ray.get(self._ledger.exhausted.remote(tenant))
        return None if reason is None else (reason, renews)


def ledger_service() -> Any:
    """The cluster's ledger service (started by the first caller; call inside a Ray session). It is a
    cluster service: never inside a tenant's placement group, whoever starts it."""
    import ray

    return (
        ray.remote(TenantLedgerActor)
        .options(name=LEDGER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0)
        .remote()
    )


def _get(ref: Any) -> Any:
    """``ray.get`` that raises the headrace error an actor call raised."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, HeadraceError):
            raise exc.cause from None
        raise
