"""Leasing budgets and rate limits in blocks: the arithmetic, with no Ray and no I/O.

A pool actor does not ask the ledger service and the rate limiter before every call. It leases a
*block* from each (dollars and tokens from the run's account; requests and tokens from the account's
rate buckets), spends it locally call by call, reports what it spent once per batch, and gives back what
it did not use (when it needs a new block, when the lease has been idle for ``LEASE_IDLE_S``, and, for
the ledger, when the run ends; a dead holder's lease is settled at its worst case).

Both sides count a leased block as reserved, so a budget is never passed by more than what is reserved in
flight, and a rate bucket never lets more through than it would for the same calls made one by one.

Blocks are sized twice:

- by the holder (:class:`BlockSizer`): from how fast it used its last block, so a busy actor asks
  for more and an idle one for less;
- by the service: never more than ``LEDGER_SHARE`` of what is left of the tightest budget
  (:func:`budget_block_calls`), nor ``RATE_SHARE`` of a bucket's one-second burst
  (:func:`rate_block_calls`). When what is left of a budget is less than a block, the ledger grants one
  call at a time: the last dollars are shared call by call, and the stop is as exact as without blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.runtime.llm.ledger import Charge
from engine.spec.models import RateLimits

LEDGER_SHARE = 0.25
"""The most of a budget's remainder (in each of dollars, input and output tokens) one block may take."""
RATE_SHARE = 0.25
"""The most of a rate bucket's one-second burst one block may take."""
LEASE_IDLE_S = 1.0
"""A lease no call has used for this long is given back (a pool actor sweeps its leases)."""
MOST_CALLS = 1_024
"""The most calls one block covers."""
_HORIZON_S = 1.0
"""A block should last about this long: long enough to save round trips, short enough to give back."""
_EPS = 1e-12


def plus(a: Charge, b: Charge) -> Charge:
    """``a + b`` (``floor_usd`` dropped)."""
    return Charge(a.cost_usd + b.cost_usd, a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens)


def minus(a: Charge, b: Charge) -> Charge:
    """``a - b`` (``floor_usd`` dropped)."""
    return Charge(a.cost_usd - b.cost_usd, a.input_tokens - b.input_tokens, a.output_tokens - b.output_tokens)


def times(a: Charge, calls: int) -> Charge:
    """``calls`` times ``a``; the least it can cost stays one call's (the ledger's tenant check)."""
    return Charge(a.cost_usd * calls, a.input_tokens * calls, a.output_tokens * calls, floor_usd=a.least_usd)


def positive(a: Charge) -> Charge:
    """Each dimension of ``a`` at zero or above."""
    return Charge(max(0.0, a.cost_usd), max(0, a.input_tokens), max(0, a.output_tokens))


def fits(charge: Charge, room: Charge) -> bool:
    """Whether ``charge`` fits in ``room`` in every dimension."""
    return (
        charge.cost_usd <= room.cost_usd + _EPS
        and charge.input_tokens <= room.input_tokens
        and charge.output_tokens <= room.output_tokens
    )


def budget_block_calls(calls: int, per_call: Charge, headroom: tuple[float, float, float]) -> int:
    """How many calls of ``per_call`` the ledger grants at once when ``calls`` are asked for and
    ``headroom`` (dollars, input and output tokens; ``inf`` where unlimited) is left of the tightest
    budget: at most ``LEDGER_SHARE`` of it, and 1 (an exact per-call reservation) when that is less
    than two calls."""
    most = float(max(1, min(calls, MOST_CALLS)))
    wanted = (per_call.cost_usd, float(per_call.input_tokens), float(per_call.output_tokens))
    for room, one in zip(headroom, wanted, strict=True):
        if one > 0 and math.isfinite(room):
            most = min(most, math.floor(max(0.0, room) * LEDGER_SHARE / one))
    return max(1, int(most))


def rate_block_calls(calls: int, limits: RateLimits, input_tokens: int, output_tokens: int) -> int:
    """How many calls of ``input_tokens`` and ``output_tokens`` one rate block covers when ``calls`` are
    asked for: at most ``RATE_SHARE`` of each bucket's one-second burst, and at least one call."""
    most = float(max(1, min(calls, MOST_CALLS)))
    per_call = (
        (limits.requests_per_minute, 1),
        (limits.input_tokens_per_minute, input_tokens),
        (limits.output_tokens_per_minute, output_tokens),
    )
    for per_minute, one in per_call:
        if per_minute and one > 0:
            burst = max(per_minute / 60.0, 1.0)
            most = min(most, math.floor(burst * RATE_SHARE / one))
    return max(1, int(most))


class BlockSizer:
    """How many calls the next block should cover, from how fast the last one was used: doubled while
    blocks last less than half the horizon, scaled down to the rate seen when one lasted much longer."""

    def __init__(self, first: int, most: int = MOST_CALLS) -> None:
        self.most = max(1, most)
        self.size = max(1, min(first, self.most))

    def next(self, used: int, elapsed_s: float) -> int:
        """The next block's size after ``used`` calls in ``elapsed_s`` seconds on the last one."""
        if used >= self.size and elapsed_s < _HORIZON_S / 2:
            self.size = min(self.most, self.size * 2)
        elif elapsed_s > _HORIZON_S * 2:
            self.size = max(1, min(self.most, math.ceil(used * _HORIZON_S / elapsed_s)))
        return self.size


@dataclass(frozen=True)
class LeaseReport:
    """What a holder tells the ledger about its lease of one run's node: what it spent since its last
    report, and how much of the lease it gives up (what it spent plus what it gives back unused)."""

    release: Charge = field(default_factory=Charge)
    spent: Charge = field(default_factory=Charge)
    answered: int = 0
    """Calls answered and billed since the last report."""
    failed: int = 0
    """Calls that failed (nothing billed) since the last report."""
    rows: int = 0
    """Rows the holder's batches answered (live progress)."""


@dataclass
class BudgetLease:
    """A pool actor's side of its lease of one run's node: what the ledger granted, what calls in flight
    hold of it and what answered calls spent, not yet reported."""

    granted: Charge = field(default_factory=Charge)
    in_flight: Charge = field(default_factory=Charge)
    spent: Charge = field(default_factory=Charge)
    answered: int = 0
    failed: int = 0
    calls: int = 0
    """Calls taken from the lease since it was last refilled (for the sizer)."""
    refilled_at: float = 0.0
    used_at: float = 0.0
    reported_at: float = 0.0
    exact: bool = False
    """The ledger granted one call at a time (the last of a budget): each call's leftover is given back
    as soon as it settles, so that other holders' calls are not kept waiting for it."""

    @property
    def free(self) -> Charge:
        """What is left for new calls."""
        return minus(minus(self.granted, self.in_flight), self.spent)

    def take(self, charge: Charge, now: float) -> bool:
        """Hold ``charge`` for one call if the lease covers it."""
        if not fits(charge, self.free):
            return False
        self.in_flight = plus(self.in_flight, charge)
        self.calls += 1
        self.used_at = now
        return True

    def settle(self, reserved: Charge, actual: Charge | None, requests: int, now: float) -> None:
        """A call that held ``reserved`` ended: ``actual`` is what it cost (None: it failed unbilled)."""
        self.in_flight = minus(self.in_flight, reserved)
        if actual is None:
            self.failed += requests
        else:
            self.spent = plus(self.spent, actual)
            self.answered += requests
        self.used_at = now

    @property
    def idle(self) -> bool:
        """No call holds any of it."""
        return self.in_flight == Charge() or fits(self.in_flight, Charge())

    def report(self, give_back: bool, rows: int = 0, now: float = 0.0) -> LeaseReport:
        """The report to send (its spend, and the unused part when ``give_back``); the lease is changed
        as if the ledger had taken it."""
        self.reported_at = now
        unused = positive(self.free) if give_back else Charge()
        report = LeaseReport(plus(self.spent, unused), self.spent, self.answered, self.failed, rows)
        self.granted = minus(self.granted, report.release)
        self.spent, self.answered, self.failed = Charge(), 0, 0
        return report

    @property
    def unreported(self) -> bool:
        """Whether it holds spend or counts the ledger has not seen."""
        return bool(self.answered or self.failed) or self.spent != Charge()


@dataclass
class RateLease:
    """A pool actor's block of one account's rate buckets: requests and tokens it may still send, from
    ``ready_at`` on (the limiter's wait for the whole block)."""

    requests: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    ready_at: float = 0.0
    calls: int = 0
    refilled_at: float = 0.0
    used_at: float = 0.0

    def take(self, input_tokens: int, output_tokens: int, now: float) -> float | None:
        """Take one call from the block: the seconds to wait before sending it, or None when the block
        does not cover it."""
        if self.requests < 1 or self.input_tokens < input_tokens or self.output_tokens < output_tokens:
            return None
        self.requests -= 1
        self.input_tokens -= input_tokens
        self.output_tokens -= output_tokens
        self.calls += 1
        self.used_at = now
        return max(0.0, self.ready_at - now)

    def refund(self, output_tokens: int) -> None:
        """Output tokens a call reserved and did not use go back to the block."""
        self.output_tokens += max(0, output_tokens)

    def drain(self) -> tuple[int, float, float]:
        """Everything left in the block (to give back); the block is empty after."""
        left = (self.requests, self.input_tokens, self.output_tokens)
        self.requests, self.input_tokens, self.output_tokens = 0, 0.0, 0.0
        return left

    @property
    def empty(self) -> bool:
        """Nothing left to give back."""
        return self.requests == 0 and self.input_tokens <= 0 and self.output_tokens <= 0
