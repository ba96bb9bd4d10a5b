"""The benchmark harness end to end on a tiny input: one case, the pyarrow loop and headrace, once each.

Needs only pyarrow, duckdb, Ray core and psutil (Ray Data and matplotlib are imported only by the
parts that use them). Starts its own local Ray, or reuses one already initialised in this process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.report import evaluate_targets, render_markdown
from benchmarks.streaming import run_case

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

SYSTEM_KEYS = {
    "repeats",
    "seconds",
    "seconds_median",
    "mb_per_s",
    "mb_per_s_min",
    "mb_per_s_max",
    "peak_memory_mb",
    "peak_rss_sum_mb",
    "peak_object_store_mb",
    "peak_driver_rss_mb",
    "idle_memory_mb",
    "rows_out",
}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench")
    result = run_case(
        "parquet_transform",
        3_000_000,
        repeats=1,
        systems=("pyarrow", "headrace"),
        data_dir=root / "data",
        work_dir=root / "work",
    )
    return json.loads(json.dumps(result))  # what lands in the results file is plain JSON


def test_tiny_case_reports_throughput_and_memory_of_each_system(tiny_result: dict[str, Any]) -> None:
    assert {
        "case",
        "size_bytes",
        "dataset",
        "query",
        "pipeline_yaml",
        "systems",
        "ratios",
        "outputs_agree",
    } <= set(tiny_result)
    assert set(tiny_result["systems"]) == {"pyarrow", "headrace"}
    rows = tiny_result["dataset"]["rows"]
    for system, figures in tiny_result["systems"].items():
        assert set(figures) >= SYSTEM_KEYS, system
        assert figures["repeats"] == 1
        assert figures["mb_per_s"] > 0
        assert figures["peak_memory_mb"] > 0
        assert figures["rows_out"] == rows  # the transform keeps every row
    assert tiny_result["outputs_agree"]
    digest = tiny_result["systems"]["headrace"]["output_digest"]
    assert digest["upper_rows"] == rows and digest["id_sum"] == rows * (rows - 1) // 2
    assert tiny_result["ratios"]["headrace"]["pyarrow"] > 0
    assert tiny_result["systems"]["headrace"]["detail"]["rows_reported"] == rows


def test_report_judges_targets_on_same_run_ratios(tiny_result: dict[str, Any]) -> None:
    targets = evaluate_targets([tiny_result])
    assert targets and all(t["status"] in {"met", "not met", "not measured"} for t in targets)
    # Ray Data was not measured, so no target against it can be judged
    assert all(t["status"] == "not measured" for t in targets if "Ray Data" in t["target"])
    doc = {
        "family": "streaming transform",
        "mode": "tiny",
        "command": "pytest",
        "results_file": "none.json",
        "machine": {
            "date": "2026-01-01T00:00:00+00:00",
            "cores": 2,
            "cpu_model": "cpu",
            "memory_gb": 1,
            "os": "os",
            "load_average_at_start": [0.0],
            "python": "3",
            "versions": {},
        },
        "results": [tiny_result],
        "targets": targets,
    }
    text = render_markdown(doc)
    assert "| 0.003gb | headrace |" in text and "× pyarrow loop" in text


def test_llm_family_reports_rates_against_the_bound_for_headrace_and_the_baseline(tmp_path: Any) -> None:
    from benchmarks.llm import LlmCase, run_cases
    from benchmarks.report import evaluate_llm_targets, render_llm_markdown

    # one tiny case that goes through every part: 429s, the shared limiter and the budget ledger
    case = LlmCase("faults_429", 0.05, 8, 40, rate_429=0.1, limiter=True, budget=True)
    results = run_cases([case], repeats=1, work_dir=tmp_path, warm_up=False, gate=False)
    (result,) = json.loads(json.dumps(results))
    assert result["case"] == case.name and result["ideal_rows_per_s"] == 160
    assert set(result["systems"]) == {"headrace", "baseline"}
    for system, figures in result["systems"].items():
        assert {
            "rows_per_s",
            "ratio_to_ideal",
            "call_rows_per_s",
            "call_ratio_to_ideal",
            "cpu_ms_per_row",
            "cpu_s_by_role",
            "runs",
        } <= set(figures), system
        assert figures["repeats"] == 1
        assert figures["rows_per_s"] > 0 and figures["call_rows_per_s"] > 0, system
        assert figures["rows_out"] == 40, system
        (run,) = figures["runs"]
        assert run["answered"] == 40 and run["requests"] > 40  # the 429s were retried
    assert result["headrace_over_baseline"] > 0
    assert result["systems"]["headrace"]["cpu_s_by_role"]["pool actor"] > 0
    doc = {
        "family": "LLM steps",
        "mode": "tiny",
        "command": "pytest",
        "results_file": "none.json",
        "machine": {
            "date": "2026-01-01T00:00:00+00:00",
            "cores": 2,
            "cpu_model": "cpu",
            "memory_gb": 1,
            "os": "os",
            "load_average_at_start": [0.0],
            "python": "3",
            "versions": {},
        },
        "results": [result],
        "targets": evaluate_llm_targets([result]),
    }
    assert "| 50 ms, N=8, 10% 429s, rate limit 1e6 rpm, budget $1e6 | 40 | 160 |" in render_llm_markdown(doc)


def test_graphs_family_reports_each_case_against_its_baseline() -> None:
    from benchmarks.graphs import TINY, evaluate_targets, run_cases
    from benchmarks.graphs_report import render_graphs_markdown

    results = json.loads(json.dumps(run_cases(TINY, repeats=1)))
    inv = results["invocations"]["systems"]
    assert {"headrace", "langgraph", "headrace_memory", "langgraph_memory", "headrace_sqlite"} <= set(inv)
    assert all(s["median"] > 0 and s["min"] <= s["median"] <= s["max"] for s in inv.values())
    chain = results["chain_50"]["systems"]
    assert chain["headrace"]["median"] > 0 and chain["langgraph"]["median"] > 0
    sizes = results["checkpoint_bytes"]["systems"]
    assert sizes["headrace"]["bytes"] > 0 and sizes["langgraph"]["bytes"] > 0
    engine = results["engine"]
    for system in ("headrace", "ray_tasks"):
        latency = engine["submit_to_first_node_ms"]["systems"][system]
        assert 0 < latency["p50"]["median"] <= latency["p99"]["median"], system
        assert engine["throughput_per_s"]["systems"][system]["median"] > 0, system
    walls = engine["concurrent_sleepy_wall_s"]["systems"]
    assert walls["headrace"]["median"] >= 0.3 and walls["langgraph"]["median"] >= 0.3  # three 100 ms awaits
    targets = evaluate_targets(results)
    assert targets and all(t["status"] in {"met", "not met", "not measured"} for t in targets)
    doc = {
        "family": "state graphs and concurrency",
        "mode": "tiny",
        "command": "pytest",
        "results_file": "none.json",
        "repeats": 1,
        "load_average_at_end": [0.0],
        "machine": {
            "date": "2026-01-01T00:00:00+00:00",
            "cores": 2,
            "cpu_model": "cpu",
            "memory_gb": 1,
            "os": "os",
            "load_average_at_start": [0.0],
            "python": "3",
            "versions": {},
        },
        "results": results,
        "targets": targets,
    }
    assert "| 3-node invocations/s ≥ 2× LangGraph (no checkpoints) |" in render_graphs_markdown(doc)
