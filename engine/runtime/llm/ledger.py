"""The cost ledger of a run: every LLM call reserves its worst case before it is sent and settles after.

Budgets apply to scopes: the run, and each node that has its own. A reservation that would take any of
its scopes past a limit is refused, and from then on every reservation is refused: no new call starts,
calls already in flight finish and settle, and the run ends ``budget_exceeded``. Spend therefore never
exceeds a budget by more than what calls in flight had reserved.

The ledger is also where a run's token and cost figures come from (the progress display polls it), so
they are sums over the provider's answers, not estimates.

A run of a tenant with a cost quota also has a ``tenant`` scope (:mod:`engine.runtime.tenants`): a
reservation that passes the run's own scopes is then reserved against the tenant's quota, shared by all
of the tenant's runs, and settled there too. A quota is shared by many runs' calls in flight, so it
*waits* rather than refuses while only their worst cases are in the way: ``reserve`` then returns False
and the caller asks again once calls have settled (:func:`engine.runtime.llm.calls.reserve_budget`). A
quota refuses, and stops the run, only when its settled spend plus the call's least cost would pass it.

Every run's ``Ledger`` lives in the cluster's one ledger service (:mod:`engine.runtime.llm.accounts`);
a run starts no actor of its own. Pool actors reserve in blocks there (a block is one reservation of
several calls' worst case, taking at most a share of what is left, see :mod:`engine.runtime.llm.blocks`)
and spend them locally, so "reserved" here includes what is leased and not yet spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from engine.errors import BudgetExceeded
from engine.spec.models import Budget


@dataclass(frozen=True)
class Charge:
    """Money and tokens of one call (a reservation, or the real usage)."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    floor_usd: float | None = None
    """The least the call can cost (its input, no output), for a tenant quota's last calls; None: its
    ``cost_usd``."""

    @property
    def least_usd(self) -> float:
        """``floor_usd``, else ``cost_usd``."""
        return self.cost_usd if self.floor_usd is None else self.floor_usd


class Wait:
    """A tenant quota's answer when a reservation does not fit beside the calls in flight but may once
    they settle: ask again later (backpressure, not a refusal)."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()


@dataclass
class NodeUsage:
    """What one LLM node has used so far."""

    requests: int = 0
    """Calls answered by the provider and billed."""
    cached_requests: int = 0
    """Rows answered from the cache (not billed)."""
    failed_requests: int = 0
    """Calls that failed (429, 5xx, timeouts...): not billed, retried or failed over."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cached_output_tokens: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    """Reserved by calls in flight."""
    rows: int = 0
    """Rows the node answered so far, counted as each batch comes back from its pool (splits report
    their rows only when they end: this is what progress shows meanwhile)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON values."""
        return asdict(self)


@dataclass
class _Scope:
    name: str
    budget: Budget
    spent: Charge = field(default_factory=Charge)
    reserved: Charge = field(default_factory=Charge)

    def overrun(self, extra: Charge) -> str | None:
        """Which limit ``extra`` on top of spend and reservations would pass, if any."""
        spent, held, budget = self.spent, self.reserved, self.budget
        checks = (
            ("max_cost_usd", budget.max_cost_usd, spent.cost_usd + held.cost_usd, extra.cost_usd, "$"),
            (
                "max_input_tokens",
                budget.max_input_tokens,
                spent.input_tokens + held.input_tokens,
                extra.input_tokens,
                "",
            ),
            (
                "max_output_tokens",
                budget.max_output_tokens,
                spent.output_tokens + held.output_tokens,
                extra.output_tokens,
                "",
            ),
        )
        for name, limit, used, more, unit in checks:
            if limit is not None and used + more > limit:
                return (
                    f"{self.name} budget {name} {unit}{limit:g}: used and reserved {unit}{used:.6g}, "
                    f"the next call may cost {unit}{more:.6g}"
                )
        return None


class TenantScope(Protocol):
    """The tenant's quota, as a run's ledger sees it (see :mod:`engine.runtime.tenants`)."""

    @property
    def name(self) -> str: ...

    def reserve(self, charge: Charge) -> str | Wait | None:
        """None: reserved; ``WAIT``: ask again once calls in flight settle; else why it is refused."""
        ...

    def settle(self, reserved: Charge, actual: Charge | None) -> None: ...

    def headroom(self) -> float:
        """Dollars left of the quota after spend and reservations (``inf``: no cost quota)."""
        ...


def _add(a: Charge, b: Charge, sign: int = 1) -> Charge:
    return Charge(
        a.cost_usd + sign * b.cost_usd,
        a.input_tokens + sign * b.input_tokens,
        a.output_tokens + sign * b.output_tokens,
    )


class Ledger:
    """Budgets and usage of one run; plain Python, wrapped by ``LedgerActor`` on a cluster."""

    def __init__(
        self,
        run_budget: Budget | None,
        node_budgets: Mapping[str, Budget],
        tenant: TenantScope | None = None,
    ) -> None:
        self._tenant = tenant
        self._scopes: dict[str, _Scope] = {}
        if run_budget is not None:
            self._scopes["run"] = _Scope("run", run_budget)
        for node, budget in node_budgets.items():
            self._scopes[f"node:{node}"] = _Scope(f"node '{node}'", budget)
        self._usage: dict[str, NodeUsage] = {}
        self.stopped: str | None = None
        self._stopped_scope = "run"

    def reserve(self, node: str, charge: Charge) -> bool:
        """Reserve ``charge`` for one call of ``node`` (True), or raise ``BudgetExceeded``. False: the
        tenant's quota asks the call to wait until calls in flight settle, then ask again."""
        if self.stopped is not None:
            raise BudgetExceeded(self.stopped, scope=self._stopped_scope)
        scopes = self._scopes_of(node)
        for scope in scopes:
            problem = scope.overrun(charge)
            if problem is not None:
                self.stopped = f"no new LLM calls: {problem}"
                self._stopped_scope = scope.name
                raise BudgetExceeded(self.stopped, scope=scope.name)
        if self._tenant is not None:
            verdict = self._tenant.reserve(charge)
            if isinstance(verdict, Wait):
                return False
            if verdict is not None:
                self.stopped = f"no new LLM calls: {verdict}"
                self._stopped_scope = self._tenant.name
                raise BudgetExceeded(self.stopped, scope=self._tenant.name)
        for scope in scopes:
            scope.reserved = _add(scope.reserved, charge)
        self._node(node).reserved_usd += charge.cost_usd
        return True

    def settle(self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1) -> None:
        """Replace a reservation by the real usage of ``requests`` answers (None: the call failed and
        nothing was billed)."""
        usage = self._node(node)
        for scope in self._scopes_of(node):
            scope.reserved = _add(scope.reserved, reserved, -1)
            if actual is not None:
                scope.spent = _add(scope.spent, actual)
        if self._tenant is not None:
            self._tenant.settle(reserved, actual)
        usage.reserved_usd -= reserved.cost_usd
        if actual is None:
            usage.failed_requests += requests
            return
        usage.requests += requests
        usage.input_tokens += actual.input_tokens
        usage.output_tokens += actual.output_tokens
        usage.cost_usd += actual.cost_usd

    def record_cached(self, node: str, requests: int, input_tokens: int, output_tokens: int) -> None:
        """Count rows answered from the cache (free)."""
        usage = self._node(node)
        usage.cached_requests += requests
        usage.cached_input_tokens += input_tokens
        usage.cached_output_tokens += output_tokens

    def record_rows(self, node: str, rows: int) -> None:
        """Count rows a batch of the node answered."""
        self._node(node).rows += rows

    def usage(self) -> dict[str, dict[str, Any]]:
        """Usage per node, as JSON values."""
        return {node: u.as_dict() for node, u in self._usage.items()}

    @property
    def tenant(self) -> TenantScope | None:
        """The run's tenant scope (None: its tenant has no cost quota)."""
        return self._tenant

    def headroom(self, node: str) -> tuple[float, float, float]:
        """What is left for ``node``'s calls of its tightest budgets (dollars, input tokens, output
        tokens) after spend and reservations, its tenant's quota included; ``inf`` where nothing limits
        it."""
        room = [math.inf, math.inf, math.inf]
        for scope in self._scopes_of(node):
            used = _add(scope.spent, scope.reserved)
            limits = (
                scope.budget.max_cost_usd,
                scope.budget.max_input_tokens,
                scope.budget.max_output_tokens,
            )
            spent = (used.cost_usd, used.input_tokens, used.output_tokens)
            for i, (limit, taken) in enumerate(zip(limits, spent, strict=True)):
                if limit is not None:
                    room[i] = min(room[i], limit - taken)
        if self._tenant is not None:
            room[0] = min(room[0], self._tenant.headroom())
        return room[0], room[1], room[2]

    def fits_without(self, node: str, charge: Charge, held: Mapping[str, Charge]) -> bool:
        """Whether ``charge`` would fit ``node``'s budgets if the reservations ``held`` (per node: other
        holders' leases) were given back."""
        for key, scope in self._scopes.items():
            if key not in ("run", f"node:{node}"):
                continue
            back = [c for n, c in held.items() if key == "run" or key == f"node:{n}"]
            freed = Charge()
            for c in back:
                freed = _add(freed, c)
            trial = _Scope(scope.name, scope.budget, scope.spent, _add(scope.reserved, freed, -1))
            if trial.overrun(charge) is not None:
                return False
        return True

    def stop_reason(self) -> str | None:
        """Why reservations are refused, once a budget has stopped the run."""
        return self.stopped

    def _scopes_of(self, node: str) -> list[_Scope]:
        return [s for key, s in self._scopes.items() if key in ("run", f"node:{node}")]

    def _node(self, node: str) -> NodeUsage:
        return self._usage.setdefault(node, NodeUsage())
