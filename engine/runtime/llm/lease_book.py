"""A pool actor's leases: its blocks of runs' budgets and of accounts' rate limits, spent call by call.

One :class:`LeaseBook` per pool actor (it is the *holder* the ledger knows it by). A call takes its worst
case from the actor's lease of its run's node and its request and tokens from the actor's block of the
account's rate buckets; only when a block does not cover a call does the actor make a round trip, which
reports what it spent, gives back what is left and leases a new block (sizes and caps in
:mod:`engine.runtime.llm.blocks`). Spend reaches the ledger when a batch ends (with its rows, in the
round trip a batch made before) and a few times a second while calls go on, so progress stays live.

Leases no call has used for ``LEASE_IDLE_S`` are given back by a sweep; when the run ends, the ledger
releases its leases itself; when the actor dies, whoever sees it die asks the ledger to settle its leases
at their worst case (``release_holder``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import BudgetExceeded
from engine.logs import get_logger
from engine.runtime.llm.blocks import (
    LEASE_IDLE_S,
    BlockSizer,
    BudgetLease,
    LeaseReport,
    RateLease,
    fits,
    minus,
    plus,
    positive,
    rate_block_calls,
)
from engine.runtime.llm.ledger import Charge
from engine.spec.models import RateLimits

_REFILLS = 8
"""Round trips one call may make for a block that covers it (more only when calls settling meanwhile
keep costing more than they reserved)."""
_SWEEP_S = 0.25
"""How often idle leases are looked for."""
_REPORT_S = 1.0
"""Spend not reported for this long is reported while calls go on (progress; batches report theirs as
they end)."""
_log = get_logger("runtime")


@dataclass
class _Budget:
    ledger: Any
    lease: BudgetLease
    sizer: BlockSizer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopped: BudgetExceeded | None = None
    """The ledger's refusal: a run's budget stop is final, so later calls are refused here, without a
    round trip each."""


@dataclass
class _Rate:
    limiter: Any
    limits: RateLimits
    lease: RateLease
    sizer: BlockSizer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


BudgetKey = tuple[str, int, str]
"""(run id, account epoch, node)."""


class LeaseBook:
    """Every lease one pool actor holds (``holder``: its name in the ledger)."""

    def __init__(self, holder: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.holder = holder
        self._clock = clock
        self._budgets: dict[BudgetKey, _Budget] = {}
        self._rates: dict[str, _Rate] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- budgets ---------------------------------------------------------------------------------------

    async def reserve_budget(self, ledger: Any, key: BudgetKey, charge: Charge, first: int) -> bool:
        """Hold ``charge`` for one call from the lease of ``key``, leasing a new block when it does not
        cover it. False: other holders' leases hold what it needs, ask again later; raises
        ``BudgetExceeded`` as a per-call reservation would."""
        self._sweep_soon()
        entry = self._budgets.get(key)
        if entry is None:
            entry = self._budgets[key] = _Budget(
                ledger, BudgetLease(refilled_at=self._clock()), BlockSizer(first)
            )
        if entry.lease.take(charge, self._clock()):
            return True
        async with entry.lock:
            for _ in range(_REFILLS):
                if entry.stopped is not None:
                    raise BudgetExceeded(str(entry.stopped), scope=entry.stopped.scope)
                now = self._clock()
                if entry.lease.take(charge, now):
                    return True
                if not await self._refill(entry, key, charge, now):
                    return False
            raise RuntimeError(
                f"node '{key[2]}': calls keep costing more than their reservations ({charge}); the lease "
                "could not catch up"
            )

    async def _refill(self, entry: _Budget, key: BudgetKey, charge: Charge, now: float) -> bool:
        """One round trip: report, give back the unused part, lease a new block (False: wait)."""
        lease = entry.lease
        calls = entry.sizer.next(lease.calls, now - lease.refilled_at)
        report = lease.report(give_back=True, now=now)
        # calls that cost more than their estimate left the lease short: the grant covers that too
        # (calls settling while this round trip is out may add more: the caller then asks again)
        debt = positive(minus(Charge(), lease.free))
        need = plus(charge, debt)
        need = Charge(need.cost_usd, need.input_tokens, need.output_tokens, floor_usd=charge.least_usd)
        try:
            granted = await _remote(
                entry.ledger.exchange.remote(key[0], key[1], key[2], self.holder, report, calls, need)
            )
        except BudgetExceeded as exc:
            entry.stopped = exc
            raise
        if granted is None:
            return False
        lease.granted, lease.calls, lease.refilled_at = plus(lease.granted, granted), 0, self._clock()
        lease.exact = fits(granted, need)
        return True

    async def settle_budget(
        self, key: BudgetKey, reserved: Charge, actual: Charge | None, requests: int
    ) -> None:
        """A call that held ``reserved`` ended (``actual``: its cost; None: it failed unbilled). At the
        last of a budget (one call granted at a time) it is reported and its leftover given back at
        once, as a per-call settlement would be."""
        entry = self._budgets.get(key)
        if entry is None:
            return
        entry.lease.settle(reserved, actual, requests, self._clock())
        if entry.lease.exact:
            await self.report(entry.ledger, key, give_back=True)

    async def report(self, ledger: Any, key: BudgetKey, rows: int = 0, give_back: bool = False) -> None:
        """Report the lease's spend (and ``rows`` answered; with ``give_back``, its unused part too):
        awaited when a batch ends, so the run's account has every call of it before the run closes it."""
        entry = self._budgets.get(key)
        if entry is None or not (entry.lease.unreported or give_back):
            if rows:
                await _remote(ledger.exchange.remote(*key, self.holder, LeaseReport(rows=rows)))
            return
        report = entry.lease.report(give_back=give_back, rows=rows, now=self._clock())
        await _remote(entry.ledger.exchange.remote(*key, self.holder, report))

    # -- rate limits -----------------------------------------------------------------------------------

    async def reserve_rate(
        self, limiter: Any, key: str, limits: RateLimits, input_tokens: int, output_tokens: int, first: int
    ) -> float:
        """Take one request and its tokens from the block of ``key``, leasing a new block from the
        limiter when it does not cover them; the seconds to wait before sending."""
        self._sweep_soon()
        entry = self._rates.get(key)
        if entry is None or entry.limits != limits:
            entry = self._rates[key] = _Rate(
                limiter, limits, RateLease(refilled_at=self._clock()), BlockSizer(first)
            )
        wait = entry.lease.take(input_tokens, output_tokens, self._clock())
        if wait is not None:
            return wait
        async with entry.lock:
            now = self._clock()
            wait = entry.lease.take(input_tokens, output_tokens, now)
            if wait is not None:
                return wait
            lease = entry.lease
            calls = rate_block_calls(
                entry.sizer.next(lease.calls, now - lease.refilled_at), limits, input_tokens, output_tokens
            )
            back = _finite(lease.drain())
            inputs = calls * input_tokens if limits.input_tokens_per_minute else 0
            outputs = calls * output_tokens if limits.output_tokens_per_minute else 0
            delay: float = await limiter.exchange.remote(key, limits, back, calls, inputs, outputs)
            lease.requests = calls
            lease.input_tokens = float(inputs) if limits.input_tokens_per_minute else math.inf
            lease.output_tokens = float(outputs) if limits.output_tokens_per_minute else math.inf
            lease.calls, lease.refilled_at = 0, self._clock()
            lease.ready_at = lease.refilled_at + delay
            taken = lease.take(input_tokens, output_tokens, lease.refilled_at)
            assert taken is not None  # the block was sized for this call
            return taken

    def refund_rate(self, key: str, output_tokens: int) -> None:
        """Output tokens a call reserved and did not use go back to the block."""
        entry = self._rates.get(key)
        if entry is not None and math.isfinite(entry.lease.output_tokens):
            entry.lease.refund(output_tokens)

    # -- giving back -----------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Report spend not yet reported; give back leases idle for ``LEASE_IDLE_S``."""
        now = self._clock()
        for key, entry in list(self._budgets.items()):
            if entry.lock.locked():
                continue  # a refill is reporting it
            idle = entry.lease.idle and now - entry.lease.used_at >= LEASE_IDLE_S
            if idle:
                del self._budgets[key]
            due = entry.lease.unreported and now - entry.lease.reported_at >= _REPORT_S
            if due or (idle and (entry.lease.unreported or entry.lease.granted != Charge())):
                report = entry.lease.report(give_back=idle, now=now)
                with contextlib.suppress(BudgetExceeded):
                    await _remote(entry.ledger.exchange.remote(*key, self.holder, report))
        for name, rate in list(self._rates.items()):
            if rate.lock.locked() or now - rate.lease.used_at < LEASE_IDLE_S:
                continue
            del self._rates[name]
            if not rate.lease.empty:
                rate.limiter.give_back.remote(name, *_finite(rate.lease.drain()))

    def _sweep_soon(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while self._budgets or self._rates:
            await asyncio.sleep(_SWEEP_S)
            try:
                await self.sweep()
            except Exception as exc:  # the ledger or limiter restarting: try again next round
                _log.warning("pool actor %s: could not give back its leases: %s", self.holder, exc)


def _finite(left: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(v if math.isfinite(v) else 0.0 for v in left)  # type: ignore[return-value]


async def _remote(ref: Any) -> Any:
    """Await an actor call, raising the ``BudgetExceeded`` it raised as itself."""
    import ray

    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        raise (exc.cause if isinstance(exc.cause, BudgetExceeded) else exc) from None
