"""The long-lived ``Engine`` on a real local Ray: a thousand state graphs at once, a bounded queue of ten
thousand, a pipeline file, cancelling, and tenants' cost quotas against the loopback LLM server."""

from __future__ import annotations

import asyncio
import csv
import gc
import itertools
import operator
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import psutil
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from engine import END, START, Engine, EngineBusy, Graph, RunHandle, TenantQuota
from engine.errors import BudgetExceeded
from engine.runtime.engine import RunCancelled
from tests.integration.test_llm import expected_label, label_responder, pipeline, write_rows
from tests.loopback import LLMServer

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROOT = Path(__file__).resolve().parents[2]


class S(BaseModel):
    n: int = 0
    trail: Annotated[list[str], operator.add] = []


def chain(*nodes: object) -> Graph:
    """START -> a -> b -> c -> END over the given node functions."""
    g = Graph(S)
    names = "abc"[: len(nodes)]
    for name, fn in zip(names, nodes, strict=True):
        g.add_node(name, fn)  # type: ignore[arg-type]
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


async def _double(s: S) -> dict[str, object]:
    await asyncio.sleep(0.01)
    return {"n": s.n * 2, "trail": ["double"]}


def _inc(s: S) -> dict[str, object]:
    return {"n": s.n + 1, "trail": ["inc"]}


def _blocker(gate: threading.Event) -> object:
    async def block(s: S) -> dict[str, object]:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return {"n": s.n + 1}

    return block


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine() as e:
        yield e


def test_a_thousand_graph_runs_submitted_at_once_all_complete_correctly(engine: Engine) -> None:
    app = chain(_inc, _double, _inc).compile()
    handles = [engine.submit(app, {"n": i}, tenant=f"t{i % 3}") for i in range(1_000)]
    results = [h.result(timeout=60) for h in handles]
    assert [r.n for r in results] == [(i + 1) * 2 + 1 for i in range(1_000)]
    assert all(r.trail == ["inc", "double", "inc"] for r in results)
    assert {h.status() for h in handles} == {"succeeded"}
    assert len({h.run_id for h in handles}) == 1_000


def test_stream_yields_the_state_after_each_step(engine: Engine) -> None:
    handle = engine.submit(chain(_inc, _inc, _inc), {"n": 0})
    assert [s.n for s in handle.stream()] == [0, 1, 2, 3]
    assert handle.result().n == 3


def test_a_failing_node_fails_its_run_only(engine: Engine) -> None:
    def boom(s: S) -> dict[str, object]:
        raise ValueError("no")

    bad = engine.submit(chain(_inc, boom), {"n": 0})
    good = engine.submit(chain(_inc), {"n": 0})
    with pytest.raises(ValueError, match="no"):  # the node's own exception reaches the caller
        bad.result(timeout=10)
    assert bad.status() == "failed"
    assert good.result(timeout=10).n == 1


def test_queued_submissions_stay_under_a_memory_bound_and_the_queue_bound_refuses(tmp_path: Path) -> None:
    gate = threading.Event()
    payload = {"n": 1, "trail": ["x" * 10]}
    with Engine(max_concurrent_runs=1, max_queued=10_000) as engine:
        app = chain(_blocker(gate)).compile()
        first = engine.submit(app, {"n": 0})
        gc.collect()
        before = psutil.Process().memory_info().rss
        queued = [engine.submit(app, payload, priority=i % 5) for i in range(10_000)]
        gc.collect()
        growth = psutil.Process().memory_info().rss - before
        assert growth < 200 * 1024 * 1024, f"10,000 queued runs took {growth / 1e6:.0f} MB"
        assert first.status() == "running" and queued[-1].status() == "queued"
        with pytest.raises(EngineBusy, match="max_queued=10,000"):
            engine.submit(app, payload)
        for handle in queued[100:]:
            assert handle.cancel()
        gate.set()
        assert first.result(timeout=30).n == 1
        assert all(h.result(timeout=30).n == 2 for h in queued[:100])
        with pytest.raises(RunCancelled):
            queued[-1].result(timeout=1)


def test_cancel_a_queued_and_a_running_graph_run() -> None:
    gate = threading.Event()
    with Engine(max_concurrent_runs=1) as engine:
        app = chain(_blocker(gate)).compile()
        running = engine.submit(app, {"n": 0})
        waiting = engine.submit(app, {"n": 0})
        deadline = time.monotonic() + 5
        while running.status() != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting.status() == "queued"
        assert waiting.cancel()
        assert waiting.status() == "cancelled"
        assert running.cancel()
        with pytest.raises(RunCancelled):
            running.result(timeout=5)
        assert running.status() == "cancelled"
        assert not running.cancel()  # already ended
        after = engine.submit(chain(_inc), {"n": 0})  # the slot was freed
        assert after.result(timeout=5).n == 1


def test_priorities_order_queued_runs(engine: Engine) -> None:
    gate = threading.Event()
    order: list[int] = []

    def record(s: S) -> dict[str, object]:
        order.append(s.n)
        return {}

    with Engine(max_concurrent_runs=1) as one:
        blocker = one.submit(chain(_blocker(gate)), {"n": 0})
        app = chain(record).compile()
        handles = [one.submit(app, {"n": p}, priority=p) for p in (1, 3, 2, 3)]
        gate.set()
        blocker.result(timeout=5)
        for h in handles:
            h.result(timeout=5)
    assert order == [3, 3, 2, 1]


def _csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "body"])
        writer.writerows([i, f"row {i}"] for i in range(rows))


def test_a_pipeline_file_runs_through_the_engine(engine: Engine, tmp_path: Path) -> None:
    _csv(tmp_path / "in.csv", 500)
    out = tmp_path / "out"
    handle = engine.submit(
        ROOT / "configs/examples/csv_to_parquet.yaml",
        overrides=[f"nodes.input.path={tmp_path / 'in.csv'}", f"nodes.output.path={out}"],
        tenant="etl",
    )
    summary = handle.result(timeout=120)
    assert handle.status() == "succeeded", summary.error
    assert summary.run_id == handle.run_id and summary.nodes["output"].rows == 500
    table = pq.read_table(out).sort_by("id")
    assert table.column("id").to_pylist() == list(range(500))
    snapshots = list(handle.stream())  # after the end: the final summary
    assert snapshots[-1]["status"] == "succeeded"


def test_cancel_a_running_dataflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 3_000)
    with LLMServer(responder=label_responder, latency_s=0.05) as server, Engine() as engine:
        handle = engine.submit(pipeline(tmp_path, server))
        deadline = time.monotonic() + 60
        while len(server.requests) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.status() == "running"
        assert handle.cancel()
        summary = handle.result(timeout=60)
        assert handle.status() == "cancelled"
        assert summary.status == "cancelled"
        assert len(server.requests) < 3_000


def test_a_tenant_at_its_cost_quota_is_stopped_while_another_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    tiny, rich = tmp_path / "tiny", tmp_path / "rich"
    tiny.mkdir()
    rich.mkdir()
    write_rows(tiny / "rows.csv", 3_000)
    with (rich / "rows.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([i, f"another message {i}"] for i in range(400))
    tenants = {
        "tiny": TenantQuota(max_cost_usd_per_period=0.02, max_concurrent_runs=1),
        "rich": TenantQuota(max_cost_usd_per_period=100.0),
    }
    small = "defaults: {batch_rows: 250}"
    with LLMServer(responder=label_responder) as server, Engine(tenants=tenants) as engine:
        stopped = engine.submit(pipeline(tiny, server, extra_top=small), tenant="tiny")
        waiting = engine.submit(pipeline(tiny, server, extra_top=small, out="again"), tenant="tiny")
        other = engine.submit(pipeline(rich, server, extra_top=small), tenant="rich")
        summary = stopped.result(timeout=120)
        assert stopped.status() == "budget_exceeded", summary.error
        assert "tenant 'tiny'" in (summary.error or "")
        assert "max_cost_usd_per_period" in (summary.error or "")
        # what the stopped run committed is whole and correct
        parts = sorted((tiny / "out").glob("*.parquet"))
        committed = [r for p in parts for r in pq.read_table(p).to_pylist()]
        assert len(committed) < 3_000
        assert all(r["label"] == expected_label(r["text"]) for r in committed)
        # the tenant's queued run never started
        with pytest.raises(BudgetExceeded, match="was not started"):
            waiting.result(timeout=30)
        assert waiting.status() == "budget_exceeded"
        # and new submissions of the tenant are refused the same way, until the period renews
        late = engine.submit(pipeline(tiny, server, extra_top=small, out="late"), tenant="tiny")
        assert late.status() == "budget_exceeded"
        # the other tenant on the same server finishes every row
        done = other.result(timeout=120)
        assert other.status() == "succeeded", done.error
        rows = pq.read_table(rich / "out").sort_by("id").to_pylist()
        assert [r["id"] for r in rows] == list(range(400))
        assert all(r["label"] == expected_label(r["text"]) for r in rows)


def test_submit_refuses_unknown_targets_and_options(engine: Engine) -> None:
    with pytest.raises(TypeError, match="CompiledGraph"):
        engine.submit(object(), {})
    with pytest.raises(TypeError, match="unknown run options"):
        engine.submit(chain(_inc), {}, colour="red")
    assert isinstance(engine.submit(chain(_inc), {}), RunHandle)
