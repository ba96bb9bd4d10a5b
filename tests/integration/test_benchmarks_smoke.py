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
