"""Admission control and tenant quota bookkeeping, without Ray: priorities, FIFO, fairness across
tenants, queue bounds, cancelling queued runs, the tenant cost ledger (periods, the stop, a run ledger's
tenant scope, engines declaring quotas), and the shape of a tenant's CPU placement group."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.errors import BudgetExceeded, QuotaError
from engine.runtime.admission import Admission, EngineBusy
from engine.runtime.llm.ledger import WAIT, Charge, Ledger
from engine.runtime.tenant_cpus import bundles, largest_bundle
from engine.runtime.tenants import LocalTenant, TenantLedger, TenantQuota
from engine.spec.models import Budget


def _names(tickets: list) -> list[str]:
    return [t.item for t in tickets]


def test_higher_priority_starts_first_and_fifo_among_equals() -> None:
    adm: Admission[str] = Admission(max_running=1, max_queued=10)
    for name, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        adm.offer("default", prio, name)
    order = []
    while adm.queued:
        (ticket,) = adm.take()
        order.append(ticket.item)
        adm.finished(ticket)
    assert order == ["b", "d", "a", "c", "e"]


def test_running_bound_holds_runs_in_the_queue_until_slots_free() -> None:
    adm: Admission[int] = Admission(max_running=3, max_queued=100)
    for i in range(10):
        adm.offer("default", 0, i)
    first = adm.take()
    assert _names(first) == [0, 1, 2] and adm.running == 3 and adm.queued == 7
    assert adm.take() == []
    adm.finished(first[1])
    assert _names(adm.take()) == [3]
    adm.finished(first[1])  # finishing twice frees one slot only
    assert adm.take() == []


def test_a_full_queue_refuses_with_engine_busy_and_accepts_again_after_draining() -> None:
    adm: Admission[int] = Admission(max_running=1, max_queued=2)
    adm.offer("default", 0, 1)
    adm.offer("default", 0, 2)
    with pytest.raises(EngineBusy, match="max_queued=2"):
        adm.offer("default", 0, 3)
    adm.take()
    adm.offer("default", 0, 3)  # one started, one place free
    assert adm.queued == 2


def test_a_tenant_queue_bound_refuses_only_that_tenant() -> None:
    adm: Admission[int] = Admission(10, 100, {"small": TenantQuota(max_queued=1)})
    adm.offer("small", 0, 1)
    with pytest.raises(EngineBusy, match="tenant 'small'"):
        adm.offer("small", 0, 2)
    adm.offer("other", 0, 3)


def test_slots_are_shared_round_robin_between_tenants_whatever_their_queue_lengths() -> None:
    adm: Admission[str] = Admission(max_running=1, max_queued=1_000)
    for i in range(100):
        adm.offer("big", 0, f"big{i}")
    for i in range(3):
        adm.offer("small", 0, f"small{i}")
    order = []
    for _ in range(8):
        (ticket,) = adm.take()
        order.append(ticket.tenant)
        adm.finished(ticket)
    # the small tenant is not starved behind the big one's hundred runs
    assert order[:6].count("small") == 3
    assert order[6:] == ["big", "big"]


def test_weights_share_slots_in_proportion() -> None:
    quotas = {"heavy": TenantQuota(weight=3), "light": TenantQuota(weight=1)}
    adm: Admission[int] = Admission(1, 10_000, quotas)
    for i in range(1_000):
        adm.offer("heavy", 0, i)
        adm.offer("light", 0, i)
    started: Counter[str] = Counter()
    for _ in range(400):
        (ticket,) = adm.take()
        started[ticket.tenant] += 1
        adm.finished(ticket)
    assert started["heavy"] == 300 and started["light"] == 100


def test_a_tenant_concurrency_cap_leaves_free_slots_to_others() -> None:
    adm: Admission[str] = Admission(4, 100, {"capped": TenantQuota(max_concurrent_runs=1)})
    for i in range(5):
        adm.offer("capped", 0, f"c{i}")
    adm.offer("free", 0, "f0")
    adm.offer("free", 0, "f1")
    started = adm.take()
    assert sorted(t.tenant for t in started) == ["capped", "free", "free"]
    assert adm.running_of("capped") == 1 and adm.queued_of("capped") == 4


def test_an_idle_tenant_earns_no_credit() -> None:
    adm: Admission[str] = Admission(1, 1_000)
    for i in range(50):
        adm.offer("a", 0, f"a{i}")
    for _ in range(20):
        (t,) = adm.take()
        adm.finished(t)
    # b arrives late: it alternates with a, it does not get 20 runs in a row
    for i in range(10):
        adm.offer("b", 0, f"b{i}")
    order = []
    for _ in range(6):
        (t,) = adm.take()
        order.append(t.tenant)
        adm.finished(t)
    assert order.count("a") == 3 and order.count("b") == 3


def test_withdrawn_and_drained_runs_leave_the_queue() -> None:
    adm: Admission[str] = Admission(1, 10)
    tickets = [adm.offer("t", 0, n) for n in "abcd"]
    adm.offer("u", 0, "x")
    assert adm.withdraw(tickets[1]) and not adm.withdraw(tickets[1])
    assert adm.queued == 4
    assert _names(adm.drain("t")) == ["a", "c", "d"]
    assert adm.queued == 1 and _names(adm.take()) == ["x"]
    assert not adm.withdraw(tickets[0])  # drained already


# -- tenant cost quotas ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_tenant_ledger_refuses_past_the_quota_then_stays_stopped_for_the_period() -> None:
    clock = Clock()
    quota = TenantQuota(max_cost_usd_per_period=1.0, period_s=60)
    ledger = TenantLedger({"a": quota, "b": quota}, clock)
    assert ledger.reserve("a", 0.6) is None
    ledger.settle("a", 0.6, 0.5)
    assert ledger.spent("a") == pytest.approx(0.5)
    reason = ledger.reserve("a", 0.6)
    assert reason is not None and "tenant 'a'" in reason and "max_cost_usd_per_period" in reason
    assert ledger.reserve("a", 0.01) == reason  # stopped: even a small call is refused
    assert ledger.exhausted("a") == reason
    assert ledger.reserve("b", 0.9) is None  # other tenants are untouched
    assert ledger.reserve("nobody", 1e9) is None  # no quota, no limit
    clock.now += 60  # the period renews
    assert ledger.exhausted("a") is None and ledger.spent("a") == 0.0
    assert ledger.reserve("a", 0.6) is None


def test_a_run_ledger_with_a_tenant_scope_waits_for_calls_in_flight_then_stops_when_spent() -> None:
    tenants = TenantLedger({"team": TenantQuota(max_cost_usd_per_period=1.0)})
    one = Ledger(Budget(max_cost_usd=100), {}, LocalTenant(tenants, "team"))
    two = Ledger(None, {}, LocalTenant(tenants, "team"))
    assert one.reserve("n", Charge(0.5)) is True
    one.settle("n", Charge(0.5), Charge(0.4))
    assert two.reserve("n", Charge(0.5)) is True
    # 0.4 spent + 0.5 reserved by the other run + 0.2 > 1.0: wait for the other run's call, not a stop
    assert one.reserve("n", Charge(0.2)) is False
    assert one.stop_reason() is None and tenants.exhausted("team") is None
    two.settle("n", Charge(0.5), Charge(0.5))
    assert one.reserve("n", Charge(0.05)) is True  # 0.9 spent + 0.05 fits
    one.settle("n", Charge(0.05), Charge(0.05))
    with pytest.raises(BudgetExceeded) as info:
        two.reserve("n", Charge(0.2, floor_usd=0.06))  # settled 0.95 + at least 0.06 > 1.0: a stop
    assert info.value.scope == "tenant 'team'"
    assert "tenant 'team'" in str(info.value)
    with pytest.raises(BudgetExceeded):
        two.reserve("n", Charge(0.0))  # the run is stopped for good
    with pytest.raises(BudgetExceeded):
        one.reserve("n", Charge(0.01))  # the tenant is exhausted for this period: every run stops
    assert tenants.spent("team") == pytest.approx(0.95)


def test_worst_case_reservations_do_not_make_a_small_quota_unusable() -> None:
    """The issue's case: quota $0.05, a run expected to cost $0.012 whose calls each reserve a large
    worst case ($0.004, 16 at once) while costing $0.0002. Before, it ended budget_exceeded near $0.01;
    now calls wait for others to settle and the run spends what it needs."""
    tenants = TenantLedger({"small": TenantQuota(max_cost_usd_per_period=0.05)})
    run = Ledger(None, {}, LocalTenant(tenants, "small"))
    worst, real, least = Charge(0.004, floor_usd=0.0001), Charge(0.0002), 60
    in_flight: list[Charge] = []
    answered = waits = 0
    while answered < least:
        while len(in_flight) < 16:
            if not run.reserve("n", worst):
                waits += 1
                break
            in_flight.append(worst)
        run.settle("n", in_flight.pop(0), real)
        answered += 1
    while in_flight:
        run.settle("n", in_flight.pop(), real)
        answered += 1
    assert run.stop_reason() is None
    assert tenants.spent("small") == pytest.approx(answered * 0.0002) and answered >= least
    assert waits > 0  # the quota was tight enough to push back


def test_a_lone_call_whose_least_cost_fits_is_granted_though_its_worst_case_does_not() -> None:
    tenants = TenantLedger({"t": TenantQuota(max_cost_usd_per_period=1.0)})
    assert tenants.reserve("t", 0.5) is None
    tenants.settle("t", 0.5, 0.95)
    assert tenants.reserve("t", 0.2, 0.01) is None  # nothing in flight: waiting would never help
    assert tenants.reserve("t", 0.2, 0.01) is WAIT  # now one is in flight: wait for it
    tenants.settle("t", 0.2, 0.03)
    assert tenants.reserve("t", 0.2, 0.01) is None  # 0.98 spent, nothing in flight, 0.01 fits
    tenants.settle("t", 0.2, 0.02)
    refused = tenants.reserve("t", 0.2, 0.01)  # 1.0 spent: even the least a call costs passes it
    assert isinstance(refused, str) and "at least $0.01" in refused


def test_a_run_budget_refusal_does_not_reserve_against_the_tenant() -> None:
    tenants = TenantLedger({"team": TenantQuota(max_cost_usd_per_period=10.0)})
    run = Ledger(Budget(max_cost_usd=0.1), {}, LocalTenant(tenants, "team"))
    with pytest.raises(BudgetExceeded) as info:
        run.reserve("n", Charge(0.5))
    assert info.value.scope == "run"
    assert tenants.exhausted("team") is None
    assert tenants.reserve("team", 9.9) is None  # nothing was held for the refused call


# -- engines declaring quotas to one ledger ---------------------------------------------------------


def test_engines_must_declare_the_same_cluster_wide_terms_for_a_tenant() -> None:
    ledger = TenantLedger()
    ledger.register("engine A", {"team": TenantQuota(max_cost_usd_per_period=5.0, max_cpus=2)})
    with pytest.raises(QuotaError) as info:
        ledger.register("engine B", {"team": TenantQuota(max_cost_usd_per_period=10.0, max_cpus=2)})
    message = str(info.value)
    assert "tenant 'team'" in message and "engine A" in message
    assert "this engine declares max_cost_usd_per_period=10" in message
    assert "declares max_cost_usd_per_period=5;" in message
    assert "max_cpus" not in message.split(";")[0]  # only the terms that differ are named
    assert ledger.holders("team") == ["engine A"]  # a refused declaration declares nothing
    # per-engine fields may differ; the cluster-wide terms are the same
    ledger.register("engine B", {"team": TenantQuota(max_cost_usd_per_period=5.0, max_cpus=2, weight=3)})
    assert ledger.holders("team") == ["engine A", "engine B"]
    assert ledger.max_cpus("team") == 2


def test_spend_outlives_the_engines_and_a_later_declaration_replaces_the_terms() -> None:
    ledger = TenantLedger()
    ledger.register("engine A", {"team": TenantQuota(max_cost_usd_per_period=1.0, max_cpus=1)})
    assert ledger.reserve("team", 0.8) is None
    ledger.settle("team", 0.8, 0.8)
    assert ledger.reserve("team", 0.5) is not None  # exhausted
    assert ledger.unregister("engine A") == ["team"]  # no open engine declares it any more
    assert ledger.max_cpus("team") is None
    ledger.register("engine B", {"team": TenantQuota(max_cost_usd_per_period=2.0)})
    assert ledger.spent("team") == pytest.approx(0.8)  # reopening an engine does not renew the quota
    assert ledger.exhausted("team") is None  # judged again against the new cap
    assert ledger.reserve("team", 1.0) is None
    assert ledger.reserve("team", 0.5) is not None


def test_a_tenants_cpus_are_one_cpu_bundles_and_a_smaller_last_one() -> None:
    assert bundles(2) == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert bundles(2.5) == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 0.5}]
    assert bundles(0.25) == [{"CPU": 0.25}]
    assert largest_bundle(2.5) == 1.0 and largest_bundle(0.25) == 0.25
