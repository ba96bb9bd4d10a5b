"""The run's cost ledger (``Ledger``): reservations against run and node budgets, the stop once one is
refused, settling with real usage, and the invariant that spend stays within the budget. No Ray.
"""

from __future__ import annotations

import pickle
import random

import pytest

from engine.errors import BudgetExceeded
from engine.runtime.llm.ledger import Charge, Ledger
from engine.spec.models import Budget

EPS = 1e-9


def _usage(ledger: Ledger, node: str) -> dict[str, float]:
    return ledger.usage()[node]


def test_reservations_within_the_budget_are_granted():
    ledger = Ledger(Budget(max_cost_usd=1.0), {})

    ledger.reserve("a", Charge(0.4, 100, 50))
    ledger.reserve("b", Charge(0.6, 100, 50))  # exactly up to the limit

    assert ledger.stop_reason() is None
    assert _usage(ledger, "a")["reserved_usd"] == pytest.approx(0.4)
    assert _usage(ledger, "b")["reserved_usd"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("budget", "charge", "limit"),
    [
        (Budget(max_cost_usd=1.0), Charge(0.6, 0, 0), "max_cost_usd"),
        (Budget(max_input_tokens=1_000), Charge(0.0, 600, 0), "max_input_tokens"),
        (Budget(max_output_tokens=1_000), Charge(0.0, 0, 600), "max_output_tokens"),
    ],
)
def test_a_refusal_names_the_limit_and_the_run_scope(budget, charge, limit):
    ledger = Ledger(budget, {})
    ledger.reserve("a", charge)

    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("a", charge)

    assert refused.value.scope == "run"
    assert "run budget" in str(refused.value)
    assert limit in str(refused.value)
    assert ledger.stop_reason() == str(refused.value)


def test_a_refusal_by_a_node_budget_names_the_node():
    ledger = Ledger(Budget(max_cost_usd=100.0), {"summarise": Budget(max_cost_usd=0.5)})

    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("summarise", Charge(0.75, 10, 10))

    assert refused.value.scope == "node 'summarise'"
    assert "node 'summarise' budget max_cost_usd $0.5" in str(refused.value)
    assert "$0.75" in str(refused.value)  # what the next call may cost


def test_budget_exceeded_survives_pickling_with_its_scope():
    """Ray carries the error from the ledger actor to the pools and the driver by pickling it."""
    ledger = Ledger(None, {"summarise": Budget(max_cost_usd=0.0)})
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("summarise", Charge(0.01))

    copy = pickle.loads(pickle.dumps(refused.value))

    assert type(copy) is BudgetExceeded
    assert str(copy) == str(refused.value)
    assert copy.scope == "node 'summarise'"
    assert copy.code == "budget_exceeded"
    assert copy.exit_code == 4


def test_once_refused_every_later_reservation_is_refused():
    """No new call starts after a refusal, not even a free one, nor one of another node."""
    ledger = Ledger(Budget(max_cost_usd=1.0), {})
    ledger.reserve("a", Charge(0.9))
    with pytest.raises(BudgetExceeded) as first:
        ledger.reserve("a", Charge(0.5))

    ledger.settle("a", Charge(0.9), Charge(0.1))  # the call in flight finishes cheaply: room again

    for node, charge in (("a", Charge(0.01)), ("b", Charge(0.0)), ("c", Charge())):
        with pytest.raises(BudgetExceeded) as later:
            ledger.reserve(node, charge)
        assert str(later.value) == str(first.value)
    assert ledger.stop_reason() == str(first.value)
    assert str(first.value).startswith("no new LLM calls: run budget max_cost_usd $1")


def test_later_refusals_keep_the_scope_of_the_budget_that_stopped_the_run():
    ledger = Ledger(None, {"summarise": Budget(max_cost_usd=0.5)})
    with pytest.raises(BudgetExceeded):
        ledger.reserve("summarise", Charge(1.0))

    with pytest.raises(BudgetExceeded) as later:
        ledger.reserve("summarise", Charge(0.1))

    assert later.value.scope == "node 'summarise'"


def test_settling_replaces_the_reservation_by_the_real_usage():
    ledger = Ledger(Budget(max_cost_usd=1.0), {})
    reserved = Charge(0.5, 1_000, 500)
    ledger.reserve("a", reserved)

    ledger.settle("a", reserved, Charge(0.1, 800, 20))

    usage = _usage(ledger, "a")
    assert usage["requests"] == 1
    assert usage["failed_requests"] == 0
    assert usage["input_tokens"] == 800
    assert usage["output_tokens"] == 20
    assert usage["cost_usd"] == pytest.approx(0.1)
    assert usage["reserved_usd"] == pytest.approx(0.0)
    # the unused part of the reservation is room again: 0.1 spent + 0.9 = the budget
    ledger.reserve("a", Charge(0.9))
    with pytest.raises(BudgetExceeded):
        ledger.reserve("a", Charge(0.001))


def test_a_failed_call_releases_its_reservation_and_counts_as_failed():
    ledger = Ledger(Budget(max_cost_usd=1.0), {})
    reserved = Charge(0.7, 1_000, 500)
    ledger.reserve("a", reserved)

    ledger.settle("a", reserved, None)

    usage = _usage(ledger, "a")
    assert usage["failed_requests"] == 1
    assert usage["requests"] == 0
    assert usage["cost_usd"] == 0.0
    assert usage["input_tokens"] == usage["output_tokens"] == 0
    assert usage["reserved_usd"] == pytest.approx(0.0)
    ledger.reserve("a", Charge(1.0))  # nothing was spent: the whole budget is there


def test_cached_answers_are_counted_apart_and_cost_nothing():
    ledger = Ledger(Budget(max_cost_usd=0.0), {})

    ledger.record_cached("a", 3, 300, 60)
    ledger.record_cached("a", 1, 100, 20)

    usage = _usage(ledger, "a")
    assert usage["cached_requests"] == 4
    assert usage["cached_input_tokens"] == 400
    assert usage["cached_output_tokens"] == 80
    assert usage["requests"] == 0
    assert usage["input_tokens"] == usage["output_tokens"] == 0
    assert usage["cost_usd"] == 0.0
    assert ledger.stop_reason() is None
    ledger.reserve("a", Charge(0.0))  # a free call still fits a zero budget


def test_a_node_budget_counts_only_its_own_nodes_calls():
    ledger = Ledger(None, {"a": Budget(max_cost_usd=1.0), "b": Budget(max_cost_usd=1.0)})

    ledger.reserve("c", Charge(50.0))  # no budget covers node c
    ledger.settle("c", Charge(50.0), Charge(50.0))
    ledger.reserve("b", Charge(0.9))
    ledger.reserve("a", Charge(0.9))  # neither c's nor b's spend counts against a

    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("a", Charge(0.2))
    assert refused.value.scope == "node 'a'"


def test_the_run_budget_counts_every_nodes_calls():
    ledger = Ledger(Budget(max_cost_usd=1.0), {"a": Budget(max_cost_usd=10.0)})
    ledger.reserve("a", Charge(0.6))

    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("b", Charge(0.6))
    assert refused.value.scope == "run"


def test_a_node_without_any_budget_is_never_refused():
    ledger = Ledger(None, {})

    for _ in range(100):
        ledger.reserve("a", Charge(1e6, 10**9, 10**9))

    assert ledger.stop_reason() is None


def test_usage_lists_only_nodes_that_called():
    ledger = Ledger(Budget(max_cost_usd=1.0), {"quiet": Budget(max_cost_usd=1.0)})
    ledger.reserve("busy", Charge(0.1))

    assert set(ledger.usage()) == {"busy"}


@pytest.mark.parametrize("seed", range(8))
def test_spend_never_exceeds_the_budget_under_random_reserve_and_settle(seed):
    """Random interleavings of reservations and settlements (real usage at most the reservation, as the
    runtime's generous estimates make it): spend + outstanding reservations stay within every budget,
    the usage figures are the sums of what was settled, and a refusal is final."""
    rng = random.Random(seed)
    run_usd, node_a_usd, input_tokens, output_tokens = 1.0, 0.4, 20_000, 8_000
    run = Budget(max_cost_usd=run_usd, max_input_tokens=input_tokens, max_output_tokens=output_tokens)
    ledger = Ledger(run, {"a": Budget(max_cost_usd=node_a_usd)})
    outstanding: list[tuple[str, Charge]] = []
    spent = {"a": Charge(), "b": Charge()}
    settled = {"a": [0, 0], "b": [0, 0]}  # billed, failed
    refused_at: int | None = None

    for step in range(400):
        if outstanding and (rng.random() < 0.45 or refused_at is not None):
            node, reserved = outstanding.pop(rng.randrange(len(outstanding)))
            if rng.random() < 0.2:
                actual = None
                settled[node][1] += 1
            else:
                share = rng.random()
                actual = Charge(
                    reserved.cost_usd * share,
                    int(reserved.input_tokens * share),
                    int(reserved.output_tokens * share),
                )
                settled[node][0] += 1
                old = spent[node]
                spent[node] = Charge(
                    old.cost_usd + actual.cost_usd,
                    old.input_tokens + actual.input_tokens,
                    old.output_tokens + actual.output_tokens,
                )
            ledger.settle(node, reserved, actual)
        else:
            node = rng.choice("ab")
            charge = Charge(rng.uniform(0, 0.15), rng.randint(0, 2_000), rng.randint(0, 600))
            try:
                ledger.reserve(node, charge)
            except BudgetExceeded:
                refused_at = step if refused_at is None else refused_at
            else:
                assert refused_at is None, f"a reservation was granted at step {step} after a refusal"
                outstanding.append((node, charge))

        usage = ledger.usage()
        held = {n: sum(c.cost_usd for m, c in outstanding if m == n) for n in "ab"}
        total_cost = sum(u["cost_usd"] for u in usage.values())
        total_held = sum(u["reserved_usd"] for u in usage.values())
        assert total_cost + total_held <= run_usd + EPS
        assert sum(u["input_tokens"] for u in usage.values()) <= input_tokens
        assert sum(u["output_tokens"] for u in usage.values()) <= output_tokens
        if "a" in usage:
            assert usage["a"]["cost_usd"] + usage["a"]["reserved_usd"] <= node_a_usd + EPS
        for n, u in usage.items():
            assert u["reserved_usd"] == pytest.approx(held[n], abs=EPS)
            assert u["cost_usd"] == pytest.approx(spent[n].cost_usd, abs=EPS)
            assert u["input_tokens"] == spent[n].input_tokens
            assert u["output_tokens"] == spent[n].output_tokens
            assert [u["requests"], u["failed_requests"]] == settled[n]

    assert refused_at is not None, "the sequence never reached a budget: make the charges larger"
    assert not outstanding  # every call in flight was settled after the stop
    with pytest.raises(BudgetExceeded):
        ledger.reserve("b", Charge())


def test_a_run_without_llm_nodes_starts_no_ledger_actor(monkeypatch: pytest.MonkeyPatch):
    # Only LLM calls reserve cost; an actor per dataflow run was a Python process competing with its
    # split tasks. Without pools nothing touches Ray at all.
    import ray

    from engine.check import check_file
    from engine.runtime.llm.services import start_services

    monkeypatch.setattr(ray, "remote", lambda *a, **k: pytest.fail("started a Ray actor"))
    pipeline = check_file(
        "pipeline.yaml",
        content="""version: 1
name: t
budget: {max_cost_usd: 1.0}
nodes:
  input: {op: read_csv, path: in.csv}
  output: {op: write_parquet, input: input, path: out}
""",
    ).loaded.spec
    services = start_services([], pipeline, "run-1", None)
    assert services.ledger is None and services.pools == {}
