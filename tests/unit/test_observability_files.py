"""The Prometheus scrape config and the Grafana dashboard in ``cluster/`` parse, and every headrace
metric the dashboard queries is one the metrics endpoint serves; the metrics of a finished run stay
counted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics
from engine.runtime.summary import NodeStats, RunSummary

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def served_samples() -> dict[str, float]:
    """Every sample name the endpoint serves (for a family with no samples yet, the names it would)."""
    text = generate_latest(metrics.REGISTRY).decode()
    names: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        for suffix in suffixes:
            names.setdefault(family.name + suffix, 0.0)
        for sample in family.samples:
            names[sample.name] = names.get(sample.name, 0.0) + sample.value
    return names


def test_prometheus_config_scrapes_headrace_and_ray() -> None:
    config = yaml.safe_load((CLUSTER / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["headrace"]["metrics_path"] == "/metrics"
    assert jobs["headrace"]["static_configs"][0]["targets"]
    assert jobs["ray_nodes"]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_promtool_accepts_the_scrape_config() -> None:
    proc = subprocess.run(
        ["promtool", "check", "config", str(CLUSTER / "prometheus.yml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_metrics_the_endpoint_serves() -> None:
    dashboard: dict[str, Any] = json.loads((CLUSTER / "grafana-dashboard.json").read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"] for p in panels)
    for wanted in ("Rows/s per node", "LLM tokens", "LLM cost", "Runs by status"):
        assert wanted in titles
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert all(p["gridPos"]["w"] > 0 and p["targets"] for p in panels)
    used = {name for expr in exprs for name in re.findall(r"\bheadrace_[a-z_]+", expr)}
    assert used - set(served_samples()) == set()
    assert "headrace_rows_total" in used and "headrace_llm_cost_usd_total" in used


def test_a_finished_run_stays_counted_by_status() -> None:
    summary = RunSummary("run-unit-1", "unit-metrics", "succeeded", 0.0, {"input": NodeStats("read_csv")})
    summary.nodes["classify"] = NodeStats("llm_classify")
    metrics.track(summary, {"classify": ("anthropic", "claude-haiku-4-5")})
    metrics.track_queue(summary.run_id, lambda: (2, 4, 1))
    summary.nodes["input"].rows = 10
    summary.nodes["classify"].llm = {"requests": 3, "input_tokens": 30, "output_tokens": 6, "cost_usd": 0.5}
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'headrace_rows_total{node="input",pipeline="unit-metrics"} 10.0' in text
    assert 'headrace_runs_active{pipeline="unit-metrics"} 1.0' in text
    assert 'headrace_scheduler_in_flight{pipeline="unit-metrics"} 2.0' in text
    metrics.finish(summary)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'headrace_rows_total{node="input",pipeline="unit-metrics"} 10.0' in text  # never goes back
    assert 'headrace_runs_total{pipeline="unit-metrics",status="succeeded"} 1.0' in text
    assert (
        'headrace_llm_cost_usd_total{model="claude-haiku-4-5",node="classify",pipeline="unit-metrics",'
        'provider="anthropic"} 0.5' in text
    )
    # the gauges drop to 0 when the run ends (a vanished series would hold its last value on a graph)
    assert 'headrace_runs_active{pipeline="unit-metrics"} 0.0' in text
    assert 'headrace_scheduler_in_flight{pipeline="unit-metrics"} 0.0' in text
    assert 'headrace_scheduler_window{pipeline="unit-metrics"} 0.0' in text
