"""Budgets and rate limits leased in blocks (issue 22 point 3), without Ray: the block sizes (a share of
what is left, one call at a time at the end), the ledger's side of a lease (granted, reported, given
back, released at the run's end and at a holder's death), a pool actor's side (``LeaseBook``) against an
in-process ledger and limiter, and the invariant that spend stays within the budget with several
holders at once."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from engine.errors import BudgetExceeded
from engine.runtime.llm.accounts import RunAccounts
from engine.runtime.llm.blocks import (
    LEASE_IDLE_S,
    BlockSizer,
    BudgetLease,
    LeaseReport,
    budget_block_calls,
    rate_block_calls,
    times,
)
from engine.runtime.llm.lease_book import LeaseBook
from engine.runtime.llm.ledger import WAIT, Charge, Ledger
from engine.runtime.llm.limiter import RateBuckets
from engine.runtime.tenants import LocalTenant, TenantLedger
from engine.spec.models import Budget, RateLimits

CALL = Charge(0.01, 100, 50)
"""One call's worst case."""


def _accounts() -> tuple[RunAccounts, TenantLedger]:
    tenants = TenantLedger({"team": _quota(10.0)})
    return RunAccounts(lambda name: LocalTenant(tenants, name)), tenants


def _quota(usd: float) -> Any:
    from engine.runtime.tenants import TenantQuota

    return TenantQuota(max_cost_usd_per_period=usd)


# -- block sizes -------------------------------------------------------------------------------------


def test_a_budget_block_takes_at_most_a_quarter_of_what_is_left_and_one_call_at_the_end() -> None:
    assert budget_block_calls(64, CALL, (math.inf, math.inf, math.inf)) == 64  # no budget in the way
    assert budget_block_calls(64, CALL, (1.0, math.inf, math.inf)) == 25  # $1 left: a quarter, 25 calls
    assert budget_block_calls(64, CALL, (math.inf, 2_000, math.inf)) == 5  # tokens limit it too
    assert budget_block_calls(64, CALL, (0.07, math.inf, math.inf)) == 1  # under 8 calls left: exact
    assert budget_block_calls(64, CALL, (0.0, math.inf, math.inf)) == 1  # nothing left: one (refused)


def test_a_rate_block_takes_at_most_a_quarter_of_a_buckets_burst() -> None:
    assert rate_block_calls(64, RateLimits(requests_per_minute=1_200), 10, 10) == 5  # burst 20
    assert rate_block_calls(64, RateLimits(requests_per_minute=1_000_000), 10, 10) == 64
    assert rate_block_calls(64, RateLimits(input_tokens_per_minute=60_000), 100, 10) == 2  # 1,000/s
    assert rate_block_calls(64, RateLimits(requests_per_minute=6), 10, 10) == 1  # never none


def test_the_block_size_follows_how_fast_blocks_are_used() -> None:
    sizer = BlockSizer(8)
    assert sizer.next(8, 0.1) == 16  # used up fast: twice as many
    assert sizer.next(16, 0.1) == 32
    assert sizer.next(3, 0.4) == 32  # not used up, not slow: kept
    assert sizer.next(10, 5.0) == 2  # 10 calls in 5 s: about what a second takes
    assert BlockSizer(8, most=10).next(8, 0.1) == 10


def test_a_lease_covers_calls_until_its_free_part_runs_out_and_reports_exact_spend() -> None:
    lease = BudgetLease(granted=times(CALL, 3))
    assert lease.take(CALL, 0.0) and lease.take(CALL, 0.0) and lease.take(CALL, 0.0)
    assert not lease.take(CALL, 0.0)  # three calls in flight hold all of it
    lease.settle(CALL, Charge(0.002, 40, 5), 1, 0.1)
    lease.settle(CALL, None, 1, 0.1)  # failed unbilled: its reservation comes back whole
    assert lease.take(CALL, 0.1)  # room again
    report = lease.report(give_back=True)
    assert report.spent == Charge(0.002, 40, 5) and (report.answered, report.failed) == (1, 0 + 1)
    # what it gives up: its spend and its free part; two calls in flight keep theirs
    assert report.release.cost_usd == pytest.approx(0.01)
    assert lease.granted.cost_usd == pytest.approx(0.02) and lease.free.cost_usd == pytest.approx(0.0)


# -- the ledger's side ---------------------------------------------------------------------------------


def test_a_leased_block_counts_as_reserved_and_its_report_settles_the_exact_spend() -> None:
    accounts, tenants = _accounts()
    epoch = accounts.open("r", Budget(max_cost_usd=10.0), {}, "team")
    granted = accounts.exchange("r", epoch, "n", "a", LeaseReport(), 64, CALL)
    assert granted is not None and granted.cost_usd == pytest.approx(0.64)  # 64 calls: well under 10/4
    assert accounts.usage("r")["n"]["reserved_usd"] == pytest.approx(0.64)
    assert tenants.reserve("team", 9.36 + 0.01) is WAIT  # the tenant counts the block as held too
    spent = Charge(0.25, 3_000, 900)
    accounts.exchange("r", epoch, "n", "a", LeaseReport(spent, spent, answered=40, failed=2, rows=40))
    usage = accounts.usage("r")["n"]
    assert usage["cost_usd"] == pytest.approx(0.25) and usage["requests"] == 40
    assert usage["failed_requests"] == 2 and usage["rows"] == 40
    assert usage["reserved_usd"] == pytest.approx(0.39)  # the rest of the block, still leased
    final = accounts.close("r")  # the run ends: what is left of its leases is released unspent
    assert final["n"]["reserved_usd"] == pytest.approx(0.0) and final["n"]["cost_usd"] == pytest.approx(0.25)
    assert accounts.leased() == Charge()
    assert tenants.spent("team") == pytest.approx(0.25)
    assert tenants.reserve("team", 9.75 - 1e-9) is None  # nothing held for the ended run


def test_the_last_of_a_budget_is_granted_call_by_call_and_the_stop_is_the_same_as_per_call() -> None:
    accounts, _ = _accounts()
    epoch = accounts.open("r", Budget(max_cost_usd=0.1), {}, None)
    first = accounts.exchange("r", epoch, "n", "a", LeaseReport(), 64, CALL)
    assert first == times(CALL, 2)  # a quarter of $0.1: two calls
    sizes = []
    held = first
    while True:
        try:
            grant = accounts.exchange("r", epoch, "n", "a", LeaseReport(held, held, answered=1), 64, CALL)
        except BudgetExceeded as exc:
            stop = exc
            break
        assert grant is not None
        sizes.append(round(grant.cost_usd / CALL.cost_usd))
        held = grant
    assert sizes[-3:] == [1, 1, 1]  # the end: exact per-call reservations
    assert accounts.usage("r")["n"]["cost_usd"] == pytest.approx(0.1)  # spent exactly up to the budget
    exact = Ledger(Budget(max_cost_usd=0.1), {})
    for _ in range(10):
        exact.reserve("n", CALL)
        exact.settle("n", CALL, CALL)
    with pytest.raises(BudgetExceeded) as per_call:
        exact.reserve("n", CALL)
    assert str(stop) == str(per_call.value) and stop.scope == per_call.value.scope == "run"


def test_a_call_waits_while_another_holders_lease_holds_what_it_needs() -> None:
    accounts, _ = _accounts()
    epoch = accounts.open("r", Budget(max_cost_usd=0.1), {}, None)
    big = accounts.exchange("r", epoch, "n", "a", LeaseReport(), 64, CALL)
    assert big == times(CALL, 2)
    for _ in range(8):  # b spends the rest call by call
        grant = accounts.exchange("r", epoch, "n", "b", LeaseReport(), 1, CALL)
        assert grant is not None
        accounts.exchange("r", epoch, "n", "b", LeaseReport(grant, grant, answered=1))
    # a holds the last $0.02: b waits instead of stopping the run
    assert accounts.exchange("r", epoch, "n", "b", LeaseReport(), 1, CALL) is None
    accounts.exchange("r", epoch, "n", "a", LeaseReport(big, Charge()))  # a gives back unused (idle)
    assert accounts.exchange("r", epoch, "n", "b", LeaseReport(), 1, CALL) == CALL


def test_a_dead_holders_lease_is_settled_at_its_worst_case_once_and_its_late_report_ignored() -> None:
    accounts, tenants = _accounts()
    epoch = accounts.open("r", None, {}, "team")
    block = accounts.exchange("r", epoch, "n", "dead", LeaseReport(), 10, CALL)
    assert block == times(CALL, 10)
    assert accounts.release_holder("dead") == 1
    assert accounts.release_holder("dead") == 0  # two tasks saw it die: settled once
    assert tenants.spent("team") == pytest.approx(0.1)  # the whole block, as if spent
    assert accounts.leased() == Charge()
    late = Charge(0.02, 10, 10)
    accounts.exchange("r", epoch, "n", "dead", LeaseReport(late, late, answered=2))
    assert tenants.spent("team") == pytest.approx(0.1)  # not counted twice


def test_a_reopened_account_ignores_the_leases_of_its_earlier_opening() -> None:
    accounts, tenants = _accounts()
    old = accounts.open("r", None, {}, "team")
    block = accounts.exchange("r", old, "n", "a", LeaseReport(), 10, CALL)
    assert block is not None
    new = accounts.open("r", None, {}, "team")  # a resumed run reuses its id
    assert new != old
    with pytest.raises(BudgetExceeded):
        accounts.exchange("r", old, "n", "a", LeaseReport(), 10, CALL)
    assert accounts.usage("r") == {} and accounts.leased() == Charge()
    assert tenants.reserve("team", 10.0 - 1e-9) is None  # the old lease no longer holds the quota


@pytest.mark.parametrize("seed", range(3))
def test_spend_never_passes_the_budget_with_several_holders_leasing_at_once(seed: int) -> None:
    """Four pool actors' lease books on one run's account, calls of random worst case and cost: the
    budget (and a node budget) is never passed, the run stops, and the ledger shows exactly what was
    billed."""
    rng = random.Random(seed)
    accounts, _ = _accounts()
    epoch = accounts.open("r", Budget(max_cost_usd=1.0), {"n": Budget(max_cost_usd=0.8)}, None)
    ledger = _Handle(accounts)
    key = ("r", epoch, "n")
    billed: list[float] = []
    stops: list[BudgetExceeded] = []

    async def holder(book: LeaseBook) -> None:
        slots = asyncio.Semaphore(4)

        async def call() -> None:
            worst = Charge(rng.uniform(0.001, 0.02), rng.randint(10, 300), rng.randint(1, 100))
            async with slots:
                try:
                    while not await book.reserve_budget(ledger, key, worst, 8):
                        await asyncio.sleep(0.001)  # other holders' leases hold the rest: wait
                except BudgetExceeded as exc:
                    stops.append(exc)
                    return
                usage = accounts.usage("r")["n"]
                assert usage["cost_usd"] + usage["reserved_usd"] <= 0.8 + 1e-9  # leases count as reserved
                await asyncio.sleep(0)
                if rng.random() < 0.1:
                    await book.settle_budget(key, worst, None, 1)  # failed, nothing billed
                    return
                actual = Charge(
                    worst.cost_usd * rng.random(), worst.input_tokens, rng.randint(0, worst.output_tokens)
                )
                billed.append(actual.cost_usd)
                await book.settle_budget(key, worst, actual, 1)

        await asyncio.gather(*(call() for _ in range(150)))
        await book.report(ledger, key, give_back=True)

    async def run() -> None:
        await asyncio.gather(*(holder(LeaseBook(f"actor-{i}")) for i in range(4)))

    asyncio.run(run())
    final = accounts.close("r")["n"]
    assert stops and all(s.scope == "node 'n'" for s in stops)
    assert final["cost_usd"] == pytest.approx(sum(billed))  # the ledger shows exactly what was spent
    assert final["cost_usd"] <= 0.8 + 1e-9


# -- the limiter's side ----------------------------------------------------------------------------------


def test_a_rate_block_is_reserved_at_once_and_its_unused_part_given_back() -> None:
    now = [0.0]
    buckets = RateBuckets(clock=lambda: now[0])
    limits = RateLimits(requests_per_minute=600)  # 10 a second, burst 10
    assert buckets.reserve("k", limits, 0, 0, requests=10) == 0.0
    assert buckets.reserve("k", limits, 0, 0, requests=5) == pytest.approx(0.5)  # as five one by one
    buckets.give_back("k", 5, 0, 0)  # five of them were never sent
    assert buckets.reserve("k", limits, 0, 0, requests=5) == pytest.approx(0.5)
    buckets.give_back("k", 100, 0, 0)  # never below an empty bucket
    assert buckets.reserve("k", limits, 0, 0, requests=11) == pytest.approx(0.1)


# -- a pool actor's side ---------------------------------------------------------------------------------


class _Handle:
    """An actor handle over a plain object: ``handle.method.remote(...)`` runs the method at once and
    returns an awaitable of its result (fire-and-forget calls run too)."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        handle = self

        class _Method:
            @staticmethod
            def remote(*args: Any) -> _Done:
                handle.calls += 1
                return _Done(method(*args))

        return _Method


class _Done:
    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Any:
        return self._value
        yield  # a generator: awaiting it returns at once


class _Limiter:
    def __init__(self) -> None:
        self.buckets = RateBuckets()

    def exchange(
        self, key: str, limits: RateLimits, back: Any, requests: int, inp: float, out: float
    ) -> float:
        self.buckets.give_back(key, *back)
        return self.buckets.reserve(key, limits, inp, out, requests)

    def give_back(self, key: str, requests: float, inp: float, out: float) -> None:
        self.buckets.give_back(key, requests, inp, out)


def test_a_pool_actors_calls_cost_a_round_trip_per_block_not_per_call() -> None:
    accounts, _ = _accounts()
    epoch = accounts.open("r", Budget(max_cost_usd=100.0), {}, None)
    ledger, limiter = _Handle(accounts), _Handle(_Limiter())
    limits = RateLimits(requests_per_minute=1_000_000)
    key = ("r", epoch, "n")

    async def run() -> None:
        book = LeaseBook("actor-1")
        slots = asyncio.Semaphore(16)

        async def call(i: int) -> None:
            async with slots:
                assert await book.reserve_budget(ledger, key, CALL, 16)
                await book.reserve_rate(limiter, "acct", limits, 100, 50, 16)
                await asyncio.sleep(0)
                await book.settle_budget(key, CALL, Charge(0.004, 80, 20), 1)
                book.refund_rate("acct", 30)

        await asyncio.gather(*(call(i) for i in range(1_000)))
        await book.report(ledger, key, rows=1_000)
        now = book._clock() + LEASE_IDLE_S + 0.01
        book._clock = lambda: now  # a second later, nothing used: the sweep gives everything back
        await book.sweep()

    asyncio.run(run())
    usage = accounts.usage("r")["n"]
    assert usage["requests"] == 1_000 and usage["rows"] == 1_000
    assert usage["cost_usd"] == pytest.approx(4.0)  # exact spend
    assert usage["reserved_usd"] == pytest.approx(0.0) and accounts.leased() == Charge()
    assert ledger.calls <= 12 and limiter.calls <= 12  # blocks of 16, 32, ... 1,024: not 1,000 each


def test_a_block_takes_at_most_a_quarter_of_what_is_left_of_the_tenants_quota() -> None:
    """With nothing in flight a quota grants a reservation bigger than what is left (so its last cents
    can be spent): a block must never be such a reservation, or a whole block could pass the quota."""
    tenants = TenantLedger({"small": _quota(0.05)})
    accounts = RunAccounts(lambda name: LocalTenant(tenants, name))
    epoch = accounts.open("r", None, {}, "small")
    assert accounts.exchange("r", epoch, "n", "a", LeaseReport(), 32, CALL) == CALL  # $0.0125: one call
    tenants_big = TenantLedger({"big": _quota(1.0)})
    accounts = RunAccounts(lambda name: LocalTenant(tenants_big, name))
    epoch = accounts.open("r", None, {}, "big")
    assert accounts.exchange("r", epoch, "n", "a", LeaseReport(), 32, CALL) == times(CALL, 25)
