"""The shared LLM services without Ray: the pools' fair order between tenants and runs, and the run
accounts of the cluster's ledger service (opened, reserved against, closed)."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.errors import BudgetExceeded
from engine.runtime.llm.accounts import RunAccounts
from engine.runtime.llm.director import FairQueue
from engine.runtime.llm.ledger import WAIT, Charge
from engine.runtime.task_slots import TaskSlots
from engine.runtime.tenants import LocalTenant, TenantLedger, TenantQuota
from engine.spec.models import Budget


def test_one_big_run_does_not_starve_small_ones() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(1000):
        queue.push("t", 1.0, "big", 50, f"big-{i}")
    for run in ("small-1", "small-2"):
        queue.push("t", 1.0, run, 50, run)
    first = [queue.pop() for _ in range(4)]
    assert "small-1" in first and "small-2" in first  # served within the first rounds, not after 1000


def test_tenants_share_by_weight_and_a_late_tenant_cannot_bank_idle_time() -> None:
    queue: FairQueue[str] = FairQueue()
    for _ in range(300):
        queue.push("heavy", 3.0, "h", 10, "heavy")
        queue.push("light", 1.0, "l", 10, "light")
    served = Counter(queue.pop() for _ in range(200))
    assert served["heavy"] == pytest.approx(150, abs=2) and served["light"] == pytest.approx(50, abs=2)
    for _ in range(20):
        queue.push("late", 1.0, "x", 10, "late")
    nxt = Counter(queue.pop() for _ in range(20))
    assert 0 < nxt["late"] < 20  # it gets its share from now on, not 200 items of catching up


def test_dropping_a_run_removes_only_its_waiting_items() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.push("t", 1.0, "gone", 1, f"gone-{i}")
        queue.push("t", 1.0, "kept", 1, f"kept-{i}")
    assert sorted(queue.drop("gone")) == [f"gone-{i}" for i in range(5)]
    assert len(queue) == 5
    assert {queue.pop() for _ in range(5)} == {f"kept-{i}" for i in range(5)}
    assert queue.pop() is None


def _accounts() -> tuple[RunAccounts, TenantLedger]:
    tenants = TenantLedger({"team": TenantQuota(max_cost_usd_per_period=1.0)})
    return RunAccounts(lambda name: LocalTenant(tenants, name)), tenants


def test_run_accounts_keep_budgets_apart_and_share_the_tenant_quota() -> None:
    accounts, tenants = _accounts()
    accounts.open("a", Budget(max_cost_usd=0.1), {}, "team")
    accounts.open("b", None, {}, "team")
    assert accounts.reserve("a", "n", Charge(0.1)) is True
    with pytest.raises(BudgetExceeded) as info:
        accounts.reserve("a", "n", Charge(0.05))  # run a's own budget is strict, as before
    assert info.value.scope == "run"
    assert accounts.reserve("b", "n", Charge(0.5)) is True  # run b is not stopped by run a's budget
    accounts.settle("a", "n", Charge(0.1), Charge(0.08))
    accounts.settle("b", "n", Charge(0.5), Charge(0.3))
    assert tenants.spent("team") == pytest.approx(0.38)
    assert accounts.usage("a")["n"]["cost_usd"] == pytest.approx(0.08)


def test_a_closed_account_returns_its_figures_refuses_calls_and_still_releases_the_tenant() -> None:
    accounts, tenants = _accounts()
    accounts.open("r", None, {}, "team")
    assert accounts.reserve("r", "n", Charge(0.4)) is True
    assert accounts.reserve("r", "n", Charge(0.4)) is True
    accounts.settle("r", "n", Charge(0.4), Charge(0.1))
    final = accounts.close("r")
    assert final["n"]["requests"] == 1 and final["n"]["cost_usd"] == pytest.approx(0.1)
    assert accounts.open_runs() == []
    with pytest.raises(BudgetExceeded):
        accounts.reserve("r", "n", Charge(0.01))
    accounts.settle("r", "n", Charge(0.4), Charge(0.2))  # a call of the ended run settles late
    assert tenants.spent("team") == pytest.approx(0.3)
    assert tenants.reserve("team", 0.7) is None  # nothing is held for the ended run any more


def test_a_dead_pool_actors_reservations_are_settled_at_their_worst_case_once() -> None:
    """A pool actor killed mid-call never settles: releasing its holder settles what it held as spent
    (the provider may have billed), frees the tenant's quota, and its late settlement counts nothing."""
    accounts, tenants = _accounts()
    accounts.open("r", None, {}, "team")
    assert accounts.reserve("r", "n", Charge(0.3), holder="dead") is True
    assert accounts.reserve("r", "n", Charge(0.3), holder="dead") is True
    assert accounts.reserve("r", "n", Charge(0.2), holder="alive") is True
    assert tenants.reserve("team", 0.3) is WAIT  # 0.8 held: another 0.3 waits for settlements
    assert accounts.release_holder("dead") == 2
    assert accounts.release_holder("dead") == 0  # twice (two tasks saw it die): nothing more
    assert tenants.spent("team") == pytest.approx(0.6)
    accounts.settle("r", "n", Charge(0.3), Charge(0.01), holder="dead")  # cannot come, but if it did
    assert tenants.spent("team") == pytest.approx(0.6)
    accounts.settle("r", "n", Charge(0.2), Charge(0.1), holder="alive")
    assert tenants.spent("team") == pytest.approx(0.7)
    accounts.settle("r", "n", Charge(), Charge(0.05), holder="alive")  # no budget: never reserved
    assert tenants.spent("team") == pytest.approx(0.75)
    assert accounts.close("r")["n"]["requests"] == 4
    assert tenants.reserve("team", 0.25) is None  # nothing held by the dead actor any more


def test_llm_task_slots_go_to_waiting_runs_in_turn() -> None:
    slots = TaskSlots(2)
    big, small = object(), object()
    assert slots.take(big) and slots.take(big)
    assert not slots.take(small)  # full: small waits in line
    slots.release()
    assert not slots.take(big)  # big just gave one back, but small was waiting first
    assert slots.take(small)
    slots.leave(big)
    assert not slots.waiting(big)
    slots.release()
    assert slots.take(big)
