"""Every run's cost account, in the cluster's one ledger service.

A run with LLM nodes opens an account when it starts (its run and node budgets, and its tenant when the
tenant has a cost quota) and closes it when it ends; the account's final figures go into the run's
record and the account is forgotten. Between the two, the shared pools' actors reserve and settle each
call against the account by run id (:class:`AccountServices`), and the driver polls its usage.

Each reservation names its *holder*, the pool actor whose call it is. An actor that dies mid-call never
settles, so whoever sees it die releases its holder: each reservation it held is settled as spent at its
worst case (the provider may have billed the call; a budget must never count less than was spent), and
the tenant's quota is no longer held by calls that will never end.

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

    def open(
        self,
        run_id: str,
        run_budget: Budget | None,
        node_budgets: Mapping[str, Budget],
        tenant: str | None,
    ) -> None:
        """Open ``run_id``'s account (again, when a resumed run reuses its id: figures start at zero)."""
        scope = self._tenant_scope(tenant) if tenant is not None else None
        self._closed.pop(run_id, None)
        self._open[run_id] = Ledger(run_budget, node_budgets, scope)

    def reserve(self, run_id: str, node: str, charge: Charge, holder: str | None = None) -> bool:
        """See ``Ledger.reserve``; a run whose account is closed (it ended) may start no call.
        ``holder``: the pool actor making the call (see :meth:`release_holder`)."""
        ledger = self._open.get(run_id)
        if ledger is None:
            raise BudgetExceeded(f"run {run_id!r} has ended: no new LLM calls", scope="run")
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

    def release_holder(self, holder: str) -> int:
        """Settle every reservation ``holder`` (a pool actor that died) still held, each as spent at its
        worst case; how many there were. Settling twice is harmless: the second finds none."""
        self._dead[holder] = None
        while len(self._dead) > _CLOSED_KEPT:
            self._dead.popitem(last=False)
        held = self._held.pop(holder, None)
        if not held:
            return 0
        for (run_id, node, charge), count in held.items():
            for _ in range(count):
                self._settle(run_id, node, charge, charge, 1)
        return sum(held.values())

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
