"""Observability on a real local Ray: one trace per run across the driver, split tasks and LLM pool
actors (exported to a JSON-lines file every process appends to), the driver's spans through the SDK's
in-memory exporter, the Prometheus endpoint of ``headrace run --metrics-port`` scraped mid-run, and a
real Prometheus server scraping it (when Debian's ``prometheus`` package is installed)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from engine import Engine, metrics, telemetry
from engine.check import check_file
from engine.errors import HeadraceError
from engine.runtime import run_checked
from tests.cli import HEADRACE
from tests.integration.test_llm import label_responder, pipeline, write_rows
from tests.loopback import LLMServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"


@pytest.fixture
def tracing_off() -> Iterator[None]:
    """Leave this process's tracing off after the test, whatever it turned on."""
    telemetry.shutdown()
    yield
    telemetry.shutdown()


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.usefixtures("ray_cluster", "tracing_off")
def test_spans_from_driver_tasks_and_llm_actors_join_one_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(telemetry.TRACE_FILE_VARIABLE, str(trace_file))
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 60)
    assert telemetry.configure("file")
    with LLMServer(responder=label_responder) as server:
        path = pipeline(tmp_path, server, extra_top="defaults: {batch_rows: 20}")
        summary = run_checked(check_file(str(path)), progress=False)
        assert summary.status == "succeeded", summary.error
        spans = read_spans(trace_file)
        by_id = {s["span_id"]: s for s in spans}
        (run,) = [s for s in spans if s["name"] == "run"]
        assert run["parent_id"] is None and run["pid"] == os.getpid()
        assert run["attributes"]["headrace.run_id"] == summary.run_id
        assert run["attributes"]["headrace.pipeline"] == "llm-test"
        assert run["attributes"]["headrace.status"] == "succeeded"
        assert {s["trace_id"] for s in spans} == {run["trace_id"]}  # one trace, every process

        splits = [s for s in spans if s["name"] == "split"]
        assert splits and all(s["parent_id"] == run["span_id"] for s in splits)
        assert all(s["pid"] != os.getpid() for s in splits)  # exported by Ray workers
        assert sum(s["attributes"]["headrace.rows.output"] for s in splits) == 60
        assert splits[0]["attributes"]["headrace.nodes"] == ["input", "classify", "output"]
        assert all(s["attributes"]["headrace.bytes"] > 0 for s in splits)

        batches = [s for s in spans if s["name"] == "llm.batch"]
        assert len(batches) == 3  # 60 rows in batches of 20
        assert all(by_id[b["parent_id"]]["name"] == "split" for b in batches)
        calls = [s for s in spans if s["name"] == "llm.call"]
        assert len(calls) == 60
        assert all(by_id[c["parent_id"]]["name"] == "llm.batch" for c in calls)
        first = calls[0]["attributes"]
        assert first["llm.provider"] == "anthropic" and first["llm.model"] == "claude-haiku-4-5"
        assert first["llm.cache_hit"] is False and first["llm.attempt"] == 1
        assert first["llm.input_tokens"] > 0 and first["llm.output_tokens"] > 0
        assert sum(c["attributes"]["llm.cost_usd"] for c in calls) == pytest.approx(summary.total_cost_usd)

        # the same rows again come from the cache: still one span per row, marked as hits
        trace_file.unlink()
        again = run_checked(check_file(str(path)), progress=False)
        assert again.status == "succeeded", again.error
    calls = [s for s in read_spans(trace_file) if s["name"] == "llm.call"]
    assert len(calls) == 60 and all(c["attributes"]["llm.cache_hit"] for c in calls)
    assert os.environ["HEADRACE_TEST_KEY"] not in trace_file.read_text(encoding="utf-8")  # no key in any span


@pytest.mark.usefixtures("ray_cluster", "tracing_off")
def test_driver_spans_reach_an_in_memory_exporter(tmp_path: Path, out_env: Path) -> None:
    exporter = InMemorySpanExporter()
    assert telemetry.configure(exporter)
    summary = run_checked(check_file(str(EXAMPLES / "quickstart.yaml")), progress=False)
    assert summary.status == "succeeded", summary.error
    (run,) = exporter.get_finished_spans()  # workers are not handed an in-process exporter
    assert run.name == "run"
    assert run.attributes is not None
    assert run.attributes["headrace.run_id"] == summary.run_id
    assert run.attributes["headrace.rows.output"] == summary.nodes["output"].rows > 0

    # a state graph's node steps and checkpoints are spans of its run
    exporter.clear()
    graph = run_checked(
        check_file(str(EXAMPLES / "review_loop.yaml")),
        input={"topic": "Ray"},
        checkpoint=f"sqlite:///{tmp_path / 'runs.db'}",
    )
    assert graph.status == "succeeded", graph.error
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "run"]
    steps = [s for s in spans if s.name == "graph.node"]
    assert {s.attributes["headrace.node"] for s in steps if s.attributes} >= {"write", "review", "publish"}
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in steps)
    assert any(s.name == "graph.checkpoint" for s in spans)
    assert root.attributes is not None and root.attributes["headrace.run_id"] == graph.run_id


@pytest.mark.usefixtures("ray_cluster", "tracing_off")
def test_tracing_is_off_by_default_and_ships_nothing(tmp_path: Path, out_env: Path) -> None:
    assert not telemetry.configure()  # no OTEL_TRACES_EXPORTER here
    assert telemetry.carrier() == {} and not telemetry.recording()
    summary = run_checked(check_file(str(EXAMPLES / "quickstart.yaml")), progress=False)
    assert summary.status == "succeeded", summary.error


def test_otlp_without_its_package_names_the_package(tracing_off: None) -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed here")
    with pytest.raises(HeadraceError, match="opentelemetry-exporter-otlp-proto-http"):
        telemetry.configure("otlp")
    assert not telemetry.enabled()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_endpoint_serves_run_metrics_during_a_run(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([i, f"row {i} " + "x" * 40] for i in range(1_500))
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: measured
nodes:
  input: {{op: read_csv, path: {src}, split_bytes: 4KiB, batch_rows: 50}}
  pause: {{op: map_batches, input: input, fn: "tests.integration.udfs:slow", kwargs: {{seconds: 0.1}}}}
  output: {{op: write_parquet, input: pause, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEADRACE_OBJECT_STORE_BYTES": str(256 * 1024 * 1024)}
    driver = subprocess.Popen(
        [*HEADRACE, "run", str(path), "--json", "--metrics-port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen: dict[str, list[Any]] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                seen = _scrape(port)
            except OSError:
                time.sleep(0.2)  # not serving yet
                continue
            rows = [s for s in seen.get("headrace_rows", []) if s.name == "headrace_rows_total"]
            if any(s.labels == {"pipeline": "measured", "node": "output"} and s.value > 0 for s in rows):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the run ended before the endpoint showed its rows"
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    for name in (
        "headrace_runs",
        "headrace_runs_active",
        "headrace_rows",
        "headrace_rows_in",
        "headrace_bytes_read",
        "headrace_node_seconds",
        "headrace_failed_rows",
        "headrace_llm_requests",
        "headrace_llm_tokens",
        "headrace_llm_cost_usd",
        "headrace_scheduler_in_flight",
        "headrace_scheduler_window",
        "headrace_graph_checkpoint_seconds",
    ):
        assert name in seen, name
    active = seen["headrace_runs_active"]
    # pipelines whose runs ended in this process read 0; this one is running
    assert [s.value for s in active if s.labels == {"pipeline": "measured"}] == [1.0]
    read = [s for s in seen["headrace_bytes_read"] if s.labels["node"] == "input"]
    assert read and read[0].value > 0
    window = seen["headrace_scheduler_window"]
    assert window and window[0].value >= 2


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus not installed")
@pytest.mark.usefixtures("ray_cluster")
def test_a_real_prometheus_server_scrapes_the_endpoint(tmp_path: Path, out_env: Path) -> None:
    port = metrics.serve(0)
    try:
        summary = run_checked(check_file(str(EXAMPLES / "quickstart.yaml")), progress=False)
        assert summary.status == "succeeded", summary.error
        prom_port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - {{job_name: headrace, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n",
            encoding="utf-8",
        )
        log = (tmp_path / "prometheus.log").open("w")
        server = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            rows = _query_until(prom_port, 'headrace_rows_total{pipeline="quickstart",node="output"}')
            assert rows == summary.nodes["output"].rows
            runs = _query_until(prom_port, 'headrace_runs_total{pipeline="quickstart",status="succeeded"}')
            assert runs >= 1
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    finally:
        metrics.stop()


def _query_until(port: int, query: str, timeout: float = 60.0) -> float:
    """The value of a PromQL instant query once Prometheus has scraped it."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                result = json.loads(reply.read())["data"]["result"]
            if result:
                return float(result[0]["value"][1])
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"Prometheus never returned {query}"
        time.sleep(0.5)


def test_an_engine_serves_its_queue_and_its_runs_by_status() -> None:
    from tests.integration.test_engine import _blocker, chain

    gate = threading.Event()
    with Engine(start_ray=False, metrics_port=0, max_concurrent_runs=2) as engine:
        port = engine.metrics_port
        assert port
        app = chain(_blocker(gate)).compile()
        handles = [engine.submit(app, {"n": i}, tenant="team-a") for i in range(5)]
        deadline = time.monotonic() + 10
        while sum(h.status() == "running" for h in handles) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = _scrape(port)
        depth = {(s.labels["tenant"], s.labels["state"]): s.value for s in seen["headrace_engine_runs"]}
        assert depth == {("team-a", "queued"): 3, ("team-a", "running"): 2}
        gate.set()
        assert [h.result(timeout=30).n for h in handles] == [1, 2, 3, 4, 5]
        # a handle's result is ready a moment before the engine books the run as ended
        deadline = time.monotonic() + 10
        while True:
            seen = _scrape(port)
            finished = {
                (s.labels["pipeline"], s.labels["status"]): s.value
                for s in seen["headrace_runs"]
                if s.name == "headrace_runs_total"
            }
            if finished.get((app.plan.name, "succeeded")) == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        # (the counters are the process's: runs of earlier tests are there too)
        assert {k: v for k, v in finished.items() if k[0] == app.plan.name} == {
            (app.plan.name, "succeeded"): 5
        }
        depth = {(s.labels["tenant"], s.labels["state"]): s.value for s in seen["headrace_engine_runs"]}
        assert depth == {("team-a", "queued"): 0, ("team-a", "running"): 0}
    assert not metrics.serving()  # the engine started the endpoint, so it stopped it
