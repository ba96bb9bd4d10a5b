"""The shared LLM services on a real local Ray: runs share one pool per (provider, model, account) and
start no actor of their own, accounts close when runs end, a pool actor killed mid-batch loses no row,
a run's waiting batches are dropped when it ends, and a small tenant quota is usable by concurrent runs
on two engines (worst-case reservations wait instead of ending runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray

from engine import Engine, TenantQuota
from engine.check import check_file
from engine.runtime import run_checked
from engine.runtime.llm.director import LeaseRequest, PoolDirector
from engine.runtime.llm.limiter import NAMESPACE
from engine.runtime.tenants import LEDGER_NAME
from tests.cli import ROOT
from tests.integration.test_llm import KEY, billed, expected_label, label_responder, pipeline, write_rows
from tests.loopback import LLMServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)


def _pools() -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("headrace-pool:")
    ]


def _director(name: str) -> Any:
    return ray.get_actor(name, namespace=NAMESPACE)


def test_runs_share_one_pool_start_no_actor_of_their_own_and_close_their_accounts(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.csv", 120)
    with LLMServer(responder=label_responder) as server:
        path = pipeline(tmp_path, server, extra_top="budget: {max_cost_usd: 5}")
        before = set(_pools())
        first = run_checked(check_file(str(path)), progress=False, cache=False)
        (name,) = set(_pools()) - before
        status = ray.get(_director(name).status.remote())
        second = run_checked(check_file(str(path)), progress=False, cache=False)
        again = ray.get(_director(name).status.remote())
    assert first.status == second.status == "succeeded", (first.error, second.error)
    assert set(_pools()) - before == {name}  # the second run found the first one's pool
    assert again["started"] == status["started"] >= 1  # and started no pool actor of its own
    assert second.nodes["classify"].llm["requests"] == 120  # its own account: figures start at zero
    ledger = ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
    assert ray.get(ledger.open_runs.remote()) == []  # both accounts were closed when their runs ended


def test_a_pool_actor_killed_mid_batch_loses_no_row_answers_none_twice_and_frees_its_reservations(
    tmp_path: Path,
) -> None:
    """The rows: every one once. The money: the killed actor's calls in flight never settle; its lease
    of the run's budget is settled as spent at its worst case, so the tenant's quota is not held
    forever."""
    data = write_rows(tmp_path / "rows.csv", 1_200)
    quota = {"killed": TenantQuota(max_cost_usd_per_period=10.0)}
    with LLMServer(responder=label_responder, latency_s=0.05) as server, Engine(tenants=quota) as engine:
        path = pipeline(tmp_path, server, extra_top="defaults: {batch_rows: 100}")
        handle = engine.submit(str(path), tenant="killed", cache=False)
        deadline = time.monotonic() + 120
        while len(billed(server)) < 150:
            assert not handle.done() and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        name = next(n for n in _pools() if ray.get(_director(n).status.remote())["leased"])
        pid = ray.get(_director(name).actor_pids.remote())[0]
        os.kill(pid, signal.SIGKILL)
        summary = handle.result(timeout=300)
        ledger = ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
        spent = ray.get(ledger.spent.remote("killed"))
        # all of the rest of the quota can be reserved: nothing is held by calls that will never end
        assert ray.get(ledger.reserve.remote("killed", 10.0 - spent - 1e-6)) is None
        # the killed actor's lease was settled (at its worst case), the others' given back at the end
        assert ray.get(ledger.lease_stats.remote())["leased_usd"] == pytest.approx(0.0, abs=1e-12)
    assert summary.status == "succeeded", summary.error
    assert spent >= summary.total_cost_usd  # the lost calls count at their worst case, never less
    rows = pq.read_table(tmp_path / "out").sort_by("id").to_pylist()
    assert [r["id"] for r in rows] == [d["id"] for d in data]  # every row once: none lost, none twice
    assert all(r["label"] == expected_label(r["text"]) for r in rows)


def _test_director(name: str, idle_s: float | None = None) -> Any:
    """A pool director as the runtime starts one (unnamed, so each test has its own)."""
    options = {"max_concurrency": 10_000, "scheduling_strategy": "DEFAULT", "num_cpus": 0}
    return ray.remote(PoolDirector).options(**options).remote(name, None, idle_s)


def test_when_a_run_ends_its_waiting_batches_are_dropped_and_others_are_served() -> None:
    director = _test_director("test-pool")
    big = [director.lease.remote(LeaseRequest("big", "t", 1.0, 10, 1)) for _ in range(12)]
    # the pool's real actors (no batch is sent: the director's dealing alone is under test); an async
    # actor starts its calls in no set order, so which four are dealt first is not known
    dealt, waiting = ray.wait(big, num_returns=4, timeout=300)  # one actor, four batches at once
    assert len(dealt) == 4 and all(lease is not None for lease in ray.get(dealt))
    assert not ray.wait(waiting, timeout=0.5)[0]  # the rest wait
    small = director.lease.remote(LeaseRequest("small", "t", 1.0, 10, 1))
    assert ray.get(director.drop.remote("big")) == 8  # the big run ended: its 8 waiting leases go
    assert ray.get(waiting) == [None] * 8
    lease = ray.get(small, timeout=30)  # the dropped run's leases count as free at once
    assert lease is not None
    assert ray.get(director.status.remote())["waiting"] == 0
    ray.kill(director)


def test_a_pool_grows_with_waiting_batches_up_to_its_actors_and_retires_idle_ones() -> None:
    director = _test_director("test-pool-grow", idle_s=1.0)
    leases = ray.get(
        [director.lease.remote(LeaseRequest("r", "t", 1.0, 10, 3)) for _ in range(12)], timeout=300
    )
    status = ray.get(director.status.remote())
    assert status["actors"] == 3 and status["leased"] == 12  # 3 actors (the most asked) x 4 batches
    more = director.lease.remote(LeaseRequest("r", "t", 1.0, 10, 3))
    time.sleep(0.5)
    assert ray.get(director.status.remote())["started"] == 3  # full at its most actors: the batch waits
    for lease in leases:
        director.release.remote(lease.id)
    last = ray.get(more, timeout=30)
    director.release.remote(last.id)
    deadline = time.monotonic() + 60
    while ray.get(director.status.remote())["actors"] and time.monotonic() < deadline:
        time.sleep(0.5)
    status = ray.get(director.status.remote())
    assert status["actors"] == 0 and status["retired"] == 3  # idle for a second: retired
    ray.kill(director)


def test_a_small_tenant_quota_is_usable_by_concurrent_runs_on_two_engines(tmp_path: Path) -> None:
    """The issue's case: quota $0.05; each run costs about $0.002 but every call reserves its worst case
    ($0.01 at max_tokens 2000), 32 at once. Before, runs ended budget_exceeded at a fraction of the quota
    and locked the tenant; now reservations wait for calls in flight to settle, and every run finishes."""
    write_rows(tmp_path / "rows.csv", 40)
    quota = {"small": TenantQuota(max_cost_usd_per_period=0.05)}
    with LLMServer(responder=label_responder) as server:
        paths = [
            pipeline(tmp_path, server, node_extra="    max_tokens: 2000", out=f"out{i}") for i in range(5)
        ]
        with Engine(tenants=quota) as one, Engine(tenants=quota) as two:
            handles = [
                (one if i % 2 else two).submit(str(p), tenant="small", cache=False)
                for i, p in enumerate(paths)
            ]
            summaries = [h.result(timeout=300) for h in handles]
            answered = len(billed(server))
    assert [s.status for s in summaries] == ["succeeded"] * 5, [s.error for s in summaries]
    spent = sum(s.total_cost_usd for s in summaries)
    assert 0 < spent <= 0.05
    assert answered == 5 * 40
    for i in range(5):
        assert pq.read_table(tmp_path / f"out{i}").num_rows == 40


def test_a_tenant_quota_still_stops_runs_once_settled_spend_reaches_it(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.csv", 400)
    quota = {"tiny": TenantQuota(max_cost_usd_per_period=0.004)}
    with LLMServer(responder=label_responder) as server, Engine(tenants=quota) as engine:
        path = pipeline(tmp_path, server, node_extra="    max_tokens: 2000")
        summary = engine.submit(str(path), tenant="tiny", cache=False).result(timeout=300)
    assert summary.status == "budget_exceeded"
    assert "tenant 'tiny'" in (summary.error or "")
    # spend passes the quota by at most one call's worst case (granted alone, its least cost fitting)
    assert summary.total_cost_usd <= 0.004 + 0.0101


_TWO_SESSIONS = """
import sys
from engine.check import check_file
from engine.runtime import run_checked

for i in range(2):  # each run starts its own local Ray and stops it: two Ray sessions in one process
    summary = run_checked(check_file(sys.argv[1], overrides=[f"nodes.output.path={sys.argv[2]}/out{i}"]),
                          progress=False)
    print(summary.status, summary.error, flush=True)
"""


def test_a_second_ray_session_in_one_process_starts_fresh_split_runners(tmp_path: Path) -> None:
    """Job ids restart at 01 in every new Ray, so a handle cached by job id alone pointed the second
    session's LLM stages at the first session's dead runner ("Can't find actor ...")."""
    write_rows(tmp_path / "rows.csv", 20)
    path = tmp_path / "two.yaml"
    path.write_text(
        f"""version: 1
name: two-sessions
nodes:
  input: {{op: read_csv, path: {tmp_path}/rows.csv, column_types: {{id: int64, text: string}}}}
  classify: {{op: llm_classify, input: input, provider: offline, prompt: "{{{{ text }}}}", labels: [a, b]}}
  output: {{op: write_parquet, input: classify, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HEADRACE_OBJECT_STORE_BYTES": str(96 << 20),
        "HEADRACE_NUM_CPUS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _TWO_SESSIONS, str(path), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["succeeded None", "succeeded None"], done.stdout
    for i in range(2):
        assert pq.read_table(tmp_path / f"out{i}").num_rows == 20


def test_an_actor_no_node_can_hold_is_withdrawn_when_no_batch_waits_for_it_any_more() -> None:
    """Issue 25, point 2: a pool actor asking for what no node has never answers; once its run ended (the
    run-time watch failed it) the director does not leave it pending on the cluster for ever."""
    director = _test_director("test-pool-unplaceable")
    options = {"num_cpus": 0, "resources": {"no_such_gateway": 1}}
    waiting = director.lease.remote(LeaseRequest("r", "t", 1.0, 10, 1, options))
    deadline = time.monotonic() + 60
    while ray.get(director.status.remote())["starting"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ray.get(director.drop.remote("r")) == 1  # the run ended while its batch waited
    assert ray.get(waiting, timeout=30) is None
    status = ray.get(director.status.remote())
    ray.kill(director)
    assert status["starting"] == 0 and status["actors"] == 0  # withdrawn, not pending for ever
