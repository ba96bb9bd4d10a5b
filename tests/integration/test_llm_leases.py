"""Budgets and rate limits leased in blocks (issue 22 point 3) on a real local Ray, through the real
``anthropic`` SDK against the loopback server: runs on two engines and two pools stop at their budgets
(spend within the budget plus what was reserved in flight), the ledger shows exactly what the provider
billed, nothing stays leased once the runs end, and a call costs no round trip to the ledger or the
limiter; a rate limit holds across two runs and two pool actors leasing blocks of it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import ray

from engine import Engine, TenantQuota
from engine.runtime import RunSummary
from engine.runtime.llm.limiter import LIMITER_NAME, NAMESPACE
from engine.runtime.tenants import LEDGER_NAME
from operators.providers.pricing import PriceTable
from tests.integration.test_llm import KEY, billed, label_responder, pipeline, run, write_rows
from tests.loopback import LLMServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

MODELS = ("claude-haiku-4-5", "claude-3-5-haiku-latest")
"""Two models of one account: two pools."""
IN_FLIGHT = 8
"""Calls in flight per run: small against the budget, so that most of it is spent in blocks (the last
eight calls' worth goes call by call, and calls in flight hold their worst case)."""
BUDGET = 0.03
MAX_TOKENS = 64


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)


def _marked(path: Path, mark: str) -> Path:
    """The pipeline with its own prompt, so that the server's log tells its calls from others'."""
    path.write_text(path.read_text().replace('"Classify.', f'"Classify ({mark}).'))
    return path


def _calls_of(server: LLMServer, mark: str) -> list[object]:
    return [r for r in billed(server) if f"Classify ({mark})." in json.dumps(r.body)]


def test_budgets_leased_in_blocks_stop_runs_on_two_engines_and_two_pools_and_settle_exactly(
    tmp_path: Path,
) -> None:
    write_rows(tmp_path / "rows.csv", 600)
    prices = PriceTable()
    quota = {"team": TenantQuota(max_cost_usd_per_period=5.0)}
    ledger = None
    with LLMServer(responder=label_responder) as server:
        paths = []
        for i, model in enumerate(MODELS * 2):
            path = pipeline(
                tmp_path,
                server,
                extra_top=f"budget: {{max_cost_usd: {BUDGET}}}\ndefaults: {{batch_rows: 100}}",
                node_extra=f"    model: {model}\n    max_tokens: {MAX_TOKENS}",
                out=f"out{i}",
            )
            path.write_text(path.read_text().replace("concurrency: 32", f"concurrency: {IN_FLIGHT}"))
            paths.append(_marked(path, f"run {i}"))
        with Engine(tenants=quota) as one, Engine(tenants=quota) as two:
            ledger = ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
            before = ray.get(ledger.lease_stats.remote())
            handles = [
                (one if i < 2 else two).submit(str(p), tenant="team", cache=False)
                for i, p in enumerate(paths)
            ]
            summaries: list[RunSummary] = [h.result(timeout=300) for h in handles]
            after = ray.get(ledger.lease_stats.remote())
            tenant_spent = ray.get(ledger.spent.remote("team"))
    calls = 0
    for i, (summary, model) in enumerate(zip(summaries, MODELS * 2, strict=True)):
        assert summary.status == "budget_exceeded" and summary.exit_code == 4, summary.error
        assert "max_cost_usd" in (summary.error or "")
        price = prices.price("anthropic", model)
        answered = _calls_of(server, f"run {i}")
        spent = sum(price.cost(r.usage["input_tokens"], r.usage["output_tokens"]) for r in answered)  # type: ignore[attr-defined]
        # the ledger shows exactly what the provider billed: leases report real usage
        assert summary.total_cost_usd == pytest.approx(spent)
        # never more than the budget plus what calls in flight reserved (at their worst)
        worst = price.cost(200, MAX_TOKENS)
        assert 0 < spent <= BUDGET + IN_FLIGHT * worst
        assert len(answered) < 600  # the budget stopped it
        calls += len(answered)
    assert tenant_spent == pytest.approx(sum(s.total_cost_usd for s in summaries))
    # unused leases were given back when the runs ended: nothing stays reserved
    assert after["leased_usd"] == pytest.approx(0.0, abs=1e-12)
    # blocks, not calls: far fewer round trips to the ledger than calls (before: two per call, a
    # reservation and a settlement; the last of each budget still goes call by call, two round trips each,
    # and how many calls fall in that last stretch depends on timing: 0.43-0.51 per call were seen)
    round_trips = (after["exchanges"] - before["exchanges"]) + (
        after["reservations"] - before["reservations"]
    )
    print(f"ledger round trips: {round_trips} for {calls} calls")
    assert round_trips < 0.8 * calls, (round_trips, calls)


def test_a_rate_limit_leased_in_blocks_holds_across_two_runs_and_two_pool_actors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 80)
    rpm = 1_200
    limit = f"providers:\n  anthropic:\n    rate_limits: {{requests_per_minute: {rpm}}}\n"
    with LLMServer(responder=label_responder) as server:
        paths = []
        for name in ("one", "two"):
            path = pipeline(
                tmp_path,
                server,
                out=name,
                extra_top="defaults: {batch_rows: 5}",
                node_extra="    resources: {concurrency: 2}",  # up to two pool actors
            )
            text = path.read_text().replace(
                "providers:\n  anthropic:\n    config:", limit.rstrip("\n") + "\n    config:"
            )
            path.write_text(text)
            paths.append(_marked(path, name))
        limiter = ray.get_actor(LIMITER_NAME, namespace=NAMESPACE) if _limiter_exists() else None
        before = ray.get(limiter.round_trips.remote()) if limiter is not None else 0
        results: list[RunSummary] = []
        threads = [threading.Thread(target=lambda p=p: results.append(run(p))) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        limiter = ray.get_actor(LIMITER_NAME, namespace=NAMESPACE)
        round_trips = ray.get(limiter.round_trips.remote()) - before
        times = sorted(r.received_at for r in billed(server))
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]
    assert len(times) == 160
    per_second = burst = rpm / 60  # the limiter holds one second's worth as burst
    # as with calls reserved one by one: in any 3-second window at most the rate plus one refill, with
    # one second allowed for wake-ups delayed on a busy machine; two unshared limits would allow twice it
    window = 3.0
    for i, start in enumerate(times):
        seen = sum(1 for t in times[i:] if t - start <= window)
        assert seen <= per_second * (window + 1.0) + burst, (start - times[0], seen)
    assert len(times) <= per_second * (times[-1] - times[0] + 1.0) + burst
    # blocks of a quarter of the burst (5 requests): a round trip per block, not per call
    print(f"limiter round trips: {round_trips} for {len(times)} calls")
    assert round_trips <= len(times) / 2, round_trips


def _limiter_exists() -> bool:
    return any(a["name"] == LIMITER_NAME for a in ray.util.list_named_actors(all_namespaces=True))
