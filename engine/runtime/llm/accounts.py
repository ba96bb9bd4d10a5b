"""Every run's cost account, in the cluster's one ledger service.

A run with LLM nodes opens an account when it starts (its run and node budgets, and its tenant when the
tenant has a cost quota) and closes it when it ends; the account's final figures go into the run's
record and the account is forgotten. Between the two, the shared pools' actors *lease* blocks of the
account (:meth:`RunAccounts.exchange`, sizes in :mod:`engine.runtime.llm.blocks`): a block is reserved
like the worst case of so many calls, the actor spends it call by call without a round trip, reports what
they really cost and gives back what it did not use. When the run ends, what is left of its leases is
released. Batch mode still reserves and settles each provider batch (:class:`AccountServices`), and the
driver polls the account's usage.

Each lease and reservation names its *holder*, the pool actor whose calls it covers. An actor that dies
never reports, so whoever sees it die releases its holder: each lease and reservation it held is settled
as spent at its worst case, once (the provider may have billed the calls; a budget must never count less
than was spent), and the tenant's quota is no longer held by calls that will never end.

:class:`RunAccounts` is plain Python; the cluster's ledger service
(:class:`~engine.runtime.tenants.TenantLedgerActor`, one named detached Ray actor) holds one beside the
tenants' quotas, so a reservation's tenant scope is a call inside the same process, not another actor
round trip, and a run costs no actor (no process) of its own.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import BudgetExceeded
from engine.runtime.llm.blocks import LeaseReport, budget_block_calls, fits, minus, plus, times
from engine.runtime.llm.ledger import Charge, Ledger, TenantScope
from engine.spec.models import Budget

_CLOSED_KEPT = 10_000
"""Closed accounts whose late settlements still reach their tenant (calls of a cancelled run may settle
after the run has ended)."""


class RunAccounts:
    """Open runs' ledgers by run id; ``tenant_scope`` gives a tenant's quota scope (None: no cost quota)."""

    def __init__(self, tenant_scope: Callable[[str], TenantScope | None]) -> None:
        self._tenant_scope = tenant_scope
        self._open: dict[str, Ledger] = {}
        self._closed: OrderedDict[str, TenantScope | None] = OrderedDict()
        self._held: dict[str, Counter[tuple[str, str, Charge]]] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()  # holders released (their actors died)
        self._epochs: dict[str, int] = {}  # open run id -> its account's epoch
        self._last_epoch = 0
        self._leases: dict[str, dict[tuple[str, str], Charge]] = {}  # run -> (holder, node) -> leased
        self.exchanges = 0
        """Lease round trips so far (grants and reports): what a run's calls cost the service."""
        self.reservations = 0
        """Per-call reservations so far (batch mode, and callers that do not lease)."""

    def open(
        self,
        run_id: str,
        run_budget: Budget | None,
        node_budgets: Mapping[str, Budget],
        tenant: str | None,
    ) -> int:
        """Open ``run_id``'s account (again, when a resumed run reuses its id: figures start at zero);
        returns its epoch, which leases name so that a reopened account never sees an old one's."""
        scope = self._tenant_scope(tenant) if tenant is not None else None
        self._closed.pop(run_id, None)
        self._release_leases(run_id)
        self._open[run_id] = Ledger(run_budget, node_budgets, scope)
        self._last_epoch += 1
        self._epochs[run_id] = self._last_epoch
        return self._last_epoch

    def reserve(self, run_id: str, node: str, charge: Charge, holder: str | None = None) -> bool:
        """See ``Ledger.reserve``; a run whose account is closed (it ended) may start no call.
        ``holder``: the pool actor making the call (see :meth:`release_holder`)."""
        ledger = self._open.get(run_id)
        if ledger is None:
            raise BudgetExceeded(f"run {run_id!r} has ended: no new LLM calls", scope="run")
        self.reservations += 1
        granted = ledger.reserve(node, charge)
        if granted and holder is not None:
            self._held.setdefault(holder, Counter())[(run_id, node, charge)] += 1
        return granted

    def settle(
        self,
        run_id: str,
        node: str,
        reserved: Charge,
        actual: Charge | None,
        requests: int = 1,
        holder: str | None = None,
    ) -> None:
        """See ``Ledger.settle``; after the run ended only its tenant's reservation is released."""
        if holder is not None:
            held = self._held.get(holder)
            key = (run_id, node, reserved)
            if held is not None and held[key]:
                held[key] -= 1
                if not held[key]:
                    del held[key]
                    if not held:
                        del self._held[holder]
            elif holder in self._dead and reserved != Charge():
                return  # settled at its worst case when its holder was reported dead
        self._settle(run_id, node, reserved, actual, requests)

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
        """One round trip of ``holder``'s lease on ``run_id``'s ``node``: take ``report`` (its spend
        since the last one, and what it gives up of the lease), then, when ``per_call`` is given, grant
        a new block of up to ``calls`` calls of ``per_call`` (see :func:`budget_block_calls`).

        Returns what was granted (empty when nothing was asked); None when the call must wait because
        other holders' leases hold what it needs (they give back what they do not use within
        ``LEASE_IDLE_S``); raises ``BudgetExceeded`` exactly as :meth:`reserve` does."""
        self.exchanges += 1
        ledger = self._open.get(run_id) if self._epochs.get(run_id) == epoch else None
        leases = self._leases.get(run_id, {}) if ledger is not None else {}
        if holder in self._dead:
            pass  # its leases were settled at their worst case when it was reported dead
        elif ledger is None:
            scope = self._closed.get(run_id)  # its leases were released when the run ended
            if scope is not None and report.spent != Charge():
                scope.settle(Charge(), report.spent)
        else:
            key = (holder, node)
            left = minus(leases.get(key, Charge()), report.release)
            if fits(left, Charge()):
                leases.pop(key, None)
            else:
                leases[key] = left
            ledger.settle(node, report.release, report.spent, report.answered)
            if report.failed:
                ledger.settle(node, Charge(), None, report.failed)
        if ledger is not None and report.rows:
            ledger.record_rows(node, report.rows)
        if per_call is None:
            return Charge()
        if ledger is None:
            raise BudgetExceeded(f"run {run_id!r} has ended: no new LLM calls", scope="run")
        granted = self._grant(ledger, run_id, node, holder, calls, per_call)
        if granted is not None:
            lease = self._leases.setdefault(run_id, {})
            lease[(holder, node)] = plus(lease.get((holder, node), Charge()), granted)
        return granted

    def _grant(
        self, ledger: Ledger, run_id: str, node: str, holder: str, calls: int, per_call: Charge
    ) -> Charge | None:
        block = budget_block_calls(calls, per_call, ledger.headroom(node))
        if block > 1 and ledger.reserve(node, times(per_call, block)):
            return times(per_call, block)
        # the last of a budget (or a tenant quota too busy for a block): one exact call at a time
        others: dict[str, Charge] = {}
        for (who, at), charge in self._leases.get(run_id, {}).items():
            if who != holder:
                others[at] = plus(others.get(at, Charge()), charge)
        if (
            ledger.stopped is None
            and others
            and not ledger.fits_without(node, per_call, {})
            and ledger.fits_without(node, per_call, others)
        ):
            return None  # other holders' leases hold what this call needs: wait for them to give it back
        return per_call if ledger.reserve(node, per_call) else None

    def release_holder(self, holder: str) -> int:
        """Settle every reservation and lease ``holder`` (a pool actor that died) still held, each as
        spent at its worst case; how many there were. Settling twice is harmless: the second finds
        none."""
        self._dead[holder] = None
        while len(self._dead) > _CLOSED_KEPT:
            self._dead.popitem(last=False)
        count = 0
        for run_id, leases in list(self._leases.items()):
            for key in [k for k in leases if k[0] == holder]:
                charge = leases.pop(key)
                self._settle(run_id, key[1], charge, charge, 0)
                count += 1
        held = self._held.pop(holder, None)
        if not held:
            return count
        for (run_id, node, charge), times_held in held.items():
            for _ in range(times_held):
                self._settle(run_id, node, charge, charge, 1)
        return count + sum(held.values())

    def leased(self) -> Charge:
        """Everything leased out now, over every run (tests check that ended runs hold none)."""
        total = Charge()
        for leases in self._leases.values():
            for charge in leases.values():
                total = plus(total, charge)
        return total

    def _release_leases(self, run_id: str) -> None:
        """Release the run's leases unused (its calls all reported: its batches ended)."""
        ledger = self._open.get(run_id)
        for (_, node), charge in self._leases.pop(run_id, {}).items():
            if ledger is not None:
                ledger.settle(node, charge, None, 0)

    def _settle(self, run_id: str, node: str, reserved: Charge, actual: Charge | None, requests: int) -> None:
        ledger = self._open.get(run_id)
        if ledger is not None:
            ledger.settle(node, reserved, actual, requests)
            return
        scope = self._closed.get(run_id)
        if scope is not None:
            scope.settle(reserved, actual)

    def record_cached(
        self, run_id: str, node: str, requests: int, input_tokens: int, output_tokens: int
    ) -> None:
        """See ``Ledger.record_cached``."""
        ledger = self._open.get(run_id)
        if ledger is not None:
            ledger.record_cached(node, requests, input_tokens, output_tokens)

    def record_rows(self, run_id: str, node: str, rows: int) -> None:
        """See ``Ledger.record_rows``."""
        ledger = self._open.get(run_id)
        if ledger is not None:
            ledger.record_rows(node, rows)

    def usage(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's usage per node so far (empty once closed)."""
        ledger = self._open.get(run_id)
        return {} if ledger is None else ledger.usage()

    def close(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Close the run's account and return its final usage per node."""
        self._release_leases(run_id)
        self._epochs.pop(run_id, None)
        ledger = self._open.pop(run_id, None)
        if ledger is None:
            return {}
        self._closed[run_id] = ledger.tenant
        while len(self._closed) > _CLOSED_KEPT:
            self._closed.popitem(last=False)
        return ledger.usage()

    def open_runs(self) -> list[str]:
        """Run ids with an open account."""
        return sorted(self._open)


class AccountServices:
    """The budget half of ``CallServices`` for one run's account in the ledger service (an actor handle);
    the pool actors' calls go through it."""

    def __init__(self, ledger: Any, run_id: str, holder: str | None = None) -> None:
        self._ledger = ledger
        self._run_id = run_id
        self._holder = holder

    async def reserve_budget(self, node: str, charge: Charge) -> bool:
        import ray

        try:
            granted: bool = await self._ledger.reserve_call.remote(self._run_id, node, charge, self._holder)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, BudgetExceeded) else exc) from None
        return granted

    async def settle_budget(
        self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1
    ) -> None:
        await self._ledger.settle_call.remote(self._run_id, node, reserved, actual, requests, self._holder)

    async def record_cached(self, node: str, requests: int, input_tokens: int, output_tokens: int) -> None:
        await self._ledger.record_cached.remote(self._run_id, node, requests, input_tokens, output_tokens)

    async def record_rows(self, node: str, rows: int) -> None:
        """Count rows a batch answered (awaited, so the run's final usage has every batch's)."""
        await self._ledger.record_rows.remote(self._run_id, node, rows)
