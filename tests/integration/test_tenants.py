"""Tenants' quotas across the cluster, on a real local Ray: a CPU cap that Ray enforces with the tenant's
placement group, one cost ledger shared by engines in two driver processes, and the refusals (engines
declaring different quotas, a task larger than a bundle, a cap larger than the cluster)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from pydantic import BaseModel

from engine import END, START, Engine, Graph, TenantQuota
from engine.errors import ConfigError, QuotaError
from engine.runtime.tenant_cpus import group_name
from tests.integration.test_llm import KEY, label_responder, pipeline, write_rows
from tests.loopback import LLMServer

ROOT = Path(__file__).resolve().parents[2]

Interval = tuple[float, float]


def _intervals(log: Path, tag: str) -> list[Interval]:
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [(start, end) for t, start, end, _ in rows if t == tag]


def _max_overlap(intervals: list[Interval]) -> int:
    """The most intervals open at one moment (one that ends as another starts does not overlap it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = running = 0
    for _, step in events:  # at equal times -1 sorts first: an end frees its CPU before a start
        running += step
        most = max(most, running)
    return most


def _wait_for_start(log: Path, tag: str, timeout_s: float = 120.0) -> None:
    started = Path(f"{log}.started")
    deadline = time.monotonic() + timeout_s
    while not (started.exists() and tag in started.read_text(encoding="utf-8").split()):
        assert time.monotonic() < deadline, f"no task tagged {tag} started"
        time.sleep(0.05)


def _warm(cpus: int) -> None:
    """Start one worker per CPU (with the run's imports done), so that two tasks can run as soon as
    two CPUs allow: the overlap below then shows what Ray permits, not how fast workers start."""
    ray.get([_import_run.remote(1.0) for _ in range(cpus)])


@ray.remote(num_cpus=1)
def _import_run(seconds: float) -> None:
    import engine.runtime.worker  # noqa: F401
    import tests.integration.udfs  # noqa: F401

    time.sleep(seconds)


def _overlaps(a: list[Interval], b: list[Interval]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _cpu_pipeline(
    tmp: Path, src: Path, name: str, log: Path, tag: str, *, seconds: float = 0.5, num_cpus: float = 1
) -> Path:
    """read (two splits) -> hold a CPU for ``seconds`` per batch -> write."""
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""version: 1
name: {name}
defaults: {{batch_rows: 1000}}
nodes:
  input: {{op: read_csv, path: {src}, split_bytes: 256}}
  hold:
    op: map_batches
    input: input
    fn: tests.integration.udfs:hold_cpu
    kwargs: {{seconds: {seconds}, log: "{log}", tag: {tag}}}
    resources: {{num_cpus: {num_cpus}}}
  output: {{op: write_parquet, input: hold, path: {tmp / "out" / name}}}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    src = tmp_path / "numbers.csv"
    src.write_text("n\n" + "".join(f"{i}\n" for i in range(100)), encoding="utf-8")  # 290 bytes
    return src


# -- the CPU quota ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_a_tenant_capped_at_one_cpu_never_runs_two_tasks_at_once_while_another_gets_the_rest(
    tmp_path: Path, numbers: Path
) -> None:
    log = tmp_path / "spans.jsonl"
    tenants = {"cpu-capped": TenantQuota(max_cpus=1)}
    _warm(2)
    with Engine(tenants=tenants) as engine:
        capped = [
            engine.submit(
                _cpu_pipeline(tmp_path, numbers, f"capped{i}", log, "capped", seconds=1.0),
                tenant="cpu-capped",
            )
            for i in range(3)
        ]
        # the capped runs ask for both CPUs first (six one-second tasks in Ray's queue before the other
        # tenant's): without the cap they take both
        _wait_for_start(log, "capped")
        time.sleep(1.5)
        free = [
            engine.submit(_cpu_pipeline(tmp_path, numbers, f"free{i}", log, "free"), tenant="cpu-free")
            for i in range(3)
        ]
        for handle in capped + free:
            summary = handle.result(timeout=180)
            assert handle.status() == "succeeded", summary.error
    mine, theirs = _intervals(log, "capped"), _intervals(log, "free")
    assert len(mine) == 6 and len(theirs) == 6  # two splits per run
    assert _max_overlap(mine) == 1, f"the capped tenant ran {_max_overlap(mine)} tasks at once"
    assert _overlaps(mine, theirs), "the other tenant should have had the other CPU meanwhile"
    # the engine closed: the tenant's group went with it, and its CPU is free again
    table = ray.util.placement_group_table()
    states = {g["state"] for g in table.values() if g["name"] == group_name("cpu-capped")}
    assert states == {"REMOVED"}


class _Where(BaseModel):
    in_group: bool | None = None


def _where(state: _Where) -> dict[str, object]:
    return {"in_group": ray.util.get_current_placement_group() is not None}


@pytest.mark.usefixtures("ray_cluster")
def test_a_heavy_graph_node_runs_in_its_tenants_group_only() -> None:
    graph = Graph(_Where)
    graph.add_node("where", _where, resources={"num_cpus": 1})
    graph.add_edge(START, "where")
    graph.add_edge("where", END)
    app = graph.compile()
    with Engine(tenants={"cpu-graph": TenantQuota(max_cpus=1)}) as engine:
        capped = engine.submit(app, {}, tenant="cpu-graph")
        other = engine.submit(app, {}, tenant="someone-else")
        assert capped.result(timeout=60).in_group is True
        assert other.result(timeout=60).in_group is False


@pytest.mark.usefixtures("ray_cluster")
def test_an_llm_run_of_a_capped_tenant_finishes_with_its_actors_placed_in_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)
    write_rows(tmp_path / "rows.csv", 60)
    tenants = {"cpu-llm": TenantQuota(max_cpus=1, max_cost_usd_per_period=10.0)}
    with LLMServer(responder=label_responder) as server, Engine(tenants=tenants) as engine:
        handle = engine.submit(pipeline(tmp_path, server), tenant="cpu-llm", cache=False)
        summary = handle.result(timeout=120)
        assert handle.status() == "succeeded", summary.error
        assert summary.nodes["output"].rows == 60
        assert summary.nodes["classify"].llm["requests"] == 60


@pytest.mark.usefixtures("ray_cluster")
def test_a_tenant_capped_at_one_cpu_has_one_task_waiting_on_its_pool_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25, point 3: the cap bounds the tenant's work under way, not only the CPU it reserves. A task
    waiting for its pool keeps its CPU, so a one-CPU tenant has one split's batch at the provider at a
    time (a task that handed its CPU back let the next split's task start and send its batch too)."""
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)
    write_rows(tmp_path / "rows.csv", 60)
    tenants = {"cpu-waits": TenantQuota(max_cpus=1)}
    with LLMServer(responder=label_responder, latency_s=0.3) as server, Engine(tenants=tenants) as engine:
        path = pipeline(tmp_path, server, extra_top="defaults: {batch_rows: 5}")
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("rows.csv, column_types", "rows.csv, split_bytes: 600, column_types"))
        handle = engine.submit(path, tenant="cpu-waits", cache=False)
        summary = handle.result(timeout=180)
        answered = [(r.received_at, r.responded_at) for r in server.requests if r.endpoint == "messages"]
    assert handle.status() == "succeeded", summary.error
    assert summary.nodes["output"].rows == 60 and len(answered) == 60
    # one 5-row batch at a time: two tasks at once would have up to 10 rows in flight
    assert _max_overlap(answered) <= 5, f"{_max_overlap(answered)} rows at the provider at once"


@pytest.mark.usefixtures("ray_cluster")
def test_a_node_larger_than_a_bundle_is_refused_before_the_run_starts(tmp_path: Path, numbers: Path) -> None:
    log = tmp_path / "spans.jsonl"
    path = _cpu_pipeline(tmp_path, numbers, "wide", log, "wide", num_cpus=2)
    with Engine(tenants={"cpu-narrow": TenantQuota(max_cpus=1.5)}) as engine:
        handle = engine.submit(path, tenant="cpu-narrow")
        with pytest.raises(ConfigError) as info:
            handle.result(timeout=60)
    message = str(info.value)
    assert "node 'hold' needs 2 CPU per task" in message
    assert "tenant 'cpu-narrow' (max_cpus=1.5)" in message
    assert "bundles of 1 CPU" in message
    assert not log.exists()  # nothing ran


@pytest.mark.usefixtures("ray_cluster")
def test_a_cap_larger_than_the_cluster_is_refused_not_left_pending(tmp_path: Path, numbers: Path) -> None:
    path = _cpu_pipeline(tmp_path, numbers, "huge", tmp_path / "spans.jsonl", "huge")
    with Engine(tenants={"cpu-huge": TenantQuota(max_cpus=3)}) as engine:
        handle = engine.submit(path, tenant="cpu-huge")
        with pytest.raises(QuotaError, match=r"tenant 'cpu-huge' has max_cpus=3, but the cluster has 2 CPUs"):
            handle.result(timeout=60)


# -- declaring quotas ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_engines_declaring_different_quotas_for_one_tenant_are_refused() -> None:
    first = {"clash": TenantQuota(max_cost_usd_per_period=1.0, max_cpus=1)}
    with Engine(tenants=first):
        with pytest.raises(QuotaError) as info:
            Engine(tenants={"clash": TenantQuota(max_cost_usd_per_period=2.5, max_cpus=1)}).start()
        message = str(info.value)
        assert "tenant 'clash'" in message
        assert "this engine declares max_cost_usd_per_period=2.5" in message
        assert "declares max_cost_usd_per_period=1;" in message
        assert f"pid {os.getpid()}" in message  # names the other engine
        # the same cluster-wide terms are fine; per-engine fields may differ
        same = {"clash": TenantQuota(max_cost_usd_per_period=1.0, max_cpus=1, max_concurrent_runs=2)}
        with Engine(tenants=same):
            pass
    # once no open engine declares the tenant, a new declaration replaces its terms
    with Engine(tenants={"clash": TenantQuota(max_cost_usd_per_period=2.5)}):
        pass


@pytest.mark.usefixtures("ray_cluster")
def test_an_engine_whose_driver_died_stops_holding_its_tenants_quota_and_cpus(
    tmp_path: Path, numbers: Path
) -> None:
    path = _cpu_pipeline(tmp_path, numbers, "orphan", tmp_path / "spans.jsonl", "orphan", seconds=0.0)
    quota = TenantQuota(max_cpus=1, max_cost_usd_per_period=1.0).model_dump_json()
    address = ray.get_runtime_context().gcs_address
    command = ["abandon", address, str(path), "orphaned", quota]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.tenant_procs", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "succeeded"

    def states() -> set[str]:
        table = ray.util.placement_group_table()
        return {g["state"] for g in table.values() if g["name"] == group_name("orphaned")}

    # the dead engine never withdrew its declaration: the ledger notices its lapsed token by itself, and
    # the tenant's group (its held CPUs) goes within seconds, with no other engine for that tenant
    deadline = time.monotonic() + 30
    while states() != {"REMOVED"}:
        assert states() == {"CREATED"}, states()
        assert time.monotonic() < deadline, "the dead engine's placement group still holds its CPUs"
        time.sleep(0.2)
    # another engine declaring other terms is not refused by the dead one
    other = {"orphaned": TenantQuota(max_cost_usd_per_period=2.0)}
    deadline = time.monotonic() + 30
    while True:
        try:
            with Engine(tenants=other):
                assert states() == {"REMOVED"}
            break
        except QuotaError:
            assert time.monotonic() < deadline, "the dead engine still holds the tenant's quota"
            time.sleep(0.5)


def test_a_default_quota_with_a_cluster_wide_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="give cost and CPU quotas"):
        Engine(default_quota=TenantQuota(max_cpus=1), start_ray=False)


# -- one cost ledger for the cluster -------------------------------------------------------------------


@pytest.fixture
def shared_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray cluster in its own process (2 CPUs, 512 MiB store), and the environment its drivers need."""
    # a short folder: Ray's socket paths under it must stay below the 107-byte limit
    folder = tempfile.mkdtemp(prefix="hr-")
    env = {
        **os.environ,
        "RAY_TMPDIR": folder,
        "PYTHONPATH": str(ROOT),
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "HEADRACE_TEST_KEY": KEY,
    }
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.tenant_procs", "cluster"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert holder.stdout is not None and holder.stdin is not None
    address = holder.stdout.readline().strip()
    try:
        assert address, "the cluster did not start"
        yield address, env
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_engines_in_two_processes_together_spend_at_most_the_tenants_quota(
    shared_cluster: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Each run alone costs ~$0.0176 (200 calls, worst case ~$0.00015 each with max_tokens 16) and fits
    the $0.03 quota; both together do not. With a ledger per engine both would succeed (~$0.035)."""
    address, env = shared_cluster
    write_rows(tmp_path / "rows.csv", 200)
    quota = TenantQuota(max_cost_usd_per_period=0.03).model_dump_json()
    procs: dict[str, subprocess.CompletedProcess[str]] = {}
    with LLMServer(responder=label_responder) as server:
        paths = {
            name: pipeline(tmp_path, server, node_extra="    max_tokens: 16", out=name)
            for name in ("one", "two", "late")
        }

        def drive(name: str) -> None:
            command = ["drive", address, str(paths[name]), "shared-tenant", quota]
            procs[name] = subprocess.run(
                [sys.executable, "-m", "tests.integration.tenant_procs", *command],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=300,
            )

        drivers = [threading.Thread(target=drive, args=(name,)) for name in ("one", "two")]
        for thread in drivers:
            thread.start()
        for thread in drivers:
            thread.join()
        drive("late")  # a third engine, once both have closed: the spend outlived them
        answered = len(server.requests)
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = {name: json.loads(proc.stdout.strip().splitlines()[-1]) for name, proc in procs.items()}
    both = [results["one"], results["two"]]
    # every call reserved against the one ledger first: together they stay in the quota, but for the
    # last call granted alone (its least cost fitting), which may pass it by its worst case (~$0.00015)
    spent = sum(float(r["cost_usd"]) for r in both)
    assert spent <= 0.03 + 0.00015, results
    assert "budget_exceeded" in {r["status"] for r in both}, results
    assert all("tenant 'shared-tenant'" in str(r["error"]) for r in both if r["status"] != "succeeded")
    assert answered < 2 * 200
    assert results["late"]["status"] == "budget_exceeded", results
    assert "was not started" in str(results["late"]["error"])
