"""The benchmarks end to end through ``python -m benchmarks run --tiny``: every family once on the
smallest input, in this process, then the index of all families; and ``--only`` on a family and a case.

Needs only pyarrow, duckdb, Ray core, psutil, langgraph and matplotlib (Ray Data is not part of a tiny
run). Starts its own local Ray, or reuses one already initialised in this process; the families reuse
it too. No figure is judged: a tiny run checks the plumbing, not the speed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main
from benchmarks.session import FAMILIES
from benchmarks.summary import SUMMARY_JSON, SUMMARY_MD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _one_ray() -> Iterator[None]:
    """One local Ray for the module, which every family of every tiny session reuses: its own, not the
    suite's shared one, so the module runs beside the tests on that one (or reuses it if it is up)."""
    from benchmarks.harness import ray_running

    with ray_running(num_cpus=2):
        yield


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


@dataclass(frozen=True)
class Session:
    """What one tiny ``run`` wrote: its folder, and each family's results document by family name."""

    root: Path
    results: Path
    docs: dict[str, dict[str, Any]]


def _run(root: Path, results: Path, *only: str) -> dict[str, dict[str, Any]]:
    argv = ["run", "--tiny", "--results-dir", str(results), "--data-dir", str(root / "data")]
    for name in only:
        argv += ["--only", name]
    assert main(argv) == 0
    files = json.loads((results / SUMMARY_JSON).read_text())["families"]
    return {name: json.loads((results / file).read_text()) for name, file in files.items()}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("bench")
    results = root / "results"
    return Session(root, results, _run(root, results))


def _streaming_case(doc: dict[str, Any], case: str) -> dict[str, Any]:
    (result,) = [r for r in doc["results"] if r["case"] == case]
    return result


def test_run_measures_every_family_and_writes_its_results_files(session: Session) -> None:
    assert list(session.docs) == list(FAMILIES)
    for name, doc in session.docs.items():
        assert doc["mode"] == "tiny" and doc["command"].startswith("python -m benchmarks run --tiny"), name
        assert Path(doc["results_file"]).name.endswith(f"-{doc['name']}.json"), name
        assert (session.results / FAMILIES[name].report).exists(), name
        assert doc["targets"] or name == "llm", name  # the tiny LLM case is not one a target is about
        assert all(t["status"] in {"met", "not met", "not measured"} for t in doc["targets"]), name
    for plot in ("throughput.png", "memory.png", "llm.png", "graphs.png", "concurrency.png"):
        assert (session.results / plot).stat().st_size > 0, plot


def test_streaming_reports_throughput_and_memory_of_each_system(session: Session) -> None:
    doc = session.docs["streaming"]
    assert {r["case"] for r in doc["results"]} == {"parquet_transform", "csv_sql"}
    result = _streaming_case(doc, "parquet_transform")
    assert {"size_bytes", "dataset", "query", "pipeline_yaml", "systems", "ratios", "outputs_agree"} <= set(
        result
    )
    assert set(result["systems"]) == {"pyarrow", "headrace"}
    rows = result["dataset"]["rows"]
    for system, figures in result["systems"].items():
        assert set(figures) >= SYSTEM_KEYS, system
        assert figures["repeats"] == 1
        assert figures["mb_per_s"] > 0
        assert figures["peak_memory_mb"] > 0
        assert figures["rows_out"] == rows  # the transform keeps every row
    assert result["outputs_agree"] and _streaming_case(doc, "csv_sql")["outputs_agree"]
    digest = result["systems"]["headrace"]["output_digest"]
    assert digest["upper_rows"] == rows and digest["id_sum"] == rows * (rows - 1) // 2
    assert result["ratios"]["headrace"]["pyarrow"] > 0
    assert result["systems"]["headrace"]["detail"]["rows_reported"] == rows


def test_streaming_targets_are_judged_on_same_run_ratios(session: Session) -> None:
    targets = session.docs["streaming"]["targets"]
    # Ray Data was not measured, so no target against it can be judged
    assert all(t["status"] == "not measured" for t in targets if "Ray Data" in t["target"])
    assert any(t["status"] != "not measured" for t in targets if "pyarrow loop" in t["target"])
    text = (session.results / "latest.md").read_text()
    assert "| 0.003gb | headrace |" in text and "× pyarrow loop" in text


def test_llm_family_reports_rates_against_the_bound_for_headrace_and_the_baseline(session: Session) -> None:
    (result,) = session.docs["llm"]["results"]
    assert result["case"] == "faults_429-50ms-n8-limiter-budget" and result["ideal_rows_per_s"] == 160
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
    text = (session.results / "latest-llm.md").read_text()
    assert "| 50 ms, N=8, 10% 429s, rate limit 1e6 rpm, budget $1e6 | 40 | 160 |" in text
    # the response cache at size: a filled cache answered every row of both runs, with no server call
    cache = session.docs["llm"]["cache"]
    assert cache["entries"] == 600 and cache["whole_run_rows_per_s"] > 0 and len(cache["runs"]) == 1
    assert "cached rows ≥ 4,000/s from a cache of 600 entries" in text


def test_graphs_family_reports_each_case_against_langgraph(session: Session) -> None:
    results = session.docs["graphs"]["results"]
    assert set(results) == {"invocations", "chain_50", "checkpoint_bytes"}
    inv = results["invocations"]["systems"]
    assert {"headrace", "langgraph", "headrace_memory", "langgraph_memory", "headrace_sqlite"} <= set(inv)
    assert all(s["median"] > 0 and s["min"] <= s["median"] <= s["max"] for s in inv.values())
    chain = results["chain_50"]["systems"]
    assert chain["headrace"]["median"] > 0 and chain["langgraph"]["median"] > 0
    sizes = results["checkpoint_bytes"]["systems"]
    assert sizes["headrace"]["bytes"] > 0 and sizes["langgraph"]["bytes"] > 0
    text = (session.results / "latest-graphs.md").read_text()
    assert "| 3-node invocations/s ≥ 2× LangGraph (no checkpoints) |" in text


def test_concurrency_family_reports_the_engine_against_ray_tasks_and_langgraph(session: Session) -> None:
    engine = session.docs["concurrency"]["results"]["engine"]
    for system in ("headrace", "ray_tasks"):
        latency = engine["submit_to_first_node_ms"]["systems"][system]
        assert 0 < latency["p50"]["median"] <= latency["p99"]["median"], system
        assert engine["throughput_per_s"]["systems"][system]["median"] > 0, system
    walls = engine["concurrent_sleepy_wall_s"]["systems"]
    assert walls["headrace"]["median"] >= 0.3 and walls["langgraph"]["median"] >= 0.3  # three 100 ms awaits
    text = (session.results / "latest-concurrency.md").read_text()
    assert "| submit-to-first-node p50 ≤ 10 ms |" in text


def test_index_lists_every_family_with_its_results_file_and_targets(session: Session) -> None:
    index = (session.results / SUMMARY_MD).read_text()
    assert f"which ran {', '.join(f'`{name}`' for name in FAMILIES)}." in index  # every family, in order
    for name, doc in session.docs.items():
        row = next(line for line in index.splitlines() if line.startswith(f"| {doc['family']} (`{name}`) |"))
        assert f"`{doc['results_file']}`" in row and doc["machine"]["date"][:10] in row, name
        assert f"## {doc['family']} (`{name}`)" in index, name
        for t in doc["targets"]:
            assert f"| {t['target']} | {t['source']} | {t['measured']} | **{t['status']}** |" in index, t


def _section(index: str, name: str) -> str:
    return index.split(f"(`{name}`)\n", 1)[1].split("\n## ", 1)[0]


def test_only_runs_the_named_family_or_case_and_the_index_keeps_the_others(session: Session) -> None:
    results = session.root / "results-only"
    shutil.copytree(session.results, results)
    before = json.loads((results / SUMMARY_JSON).read_text())["families"]
    docs = _run(session.root, results, "csv_sql", "graphs")
    after = json.loads((results / SUMMARY_JSON).read_text())["families"]
    assert after["streaming"] == before["streaming"].replace("streaming-tiny", "streaming-tiny-csv_sql")
    assert [r["case"] for r in docs["streaming"]["results"]] == ["csv_sql"]
    assert docs["graphs"]["command"].endswith("--only csv_sql --only graphs")
    assert {n: after[n] for n in ("graphs", "llm", "concurrency")} == {
        n: before[n] for n in ("graphs", "llm", "concurrency")
    }
    index = (results / SUMMARY_MD).read_text()
    assert "which ran `streaming`, `graphs`." in index
    assert f"`{docs['streaming']['results_file']}`" in index and before["streaming"] not in index
    for name in ("streaming", "graphs"):
        assert "(this session, tiny mode" in _section(index, name), name
    for name in ("llm", "concurrency"):  # not run: shown from the first session's files
        section = _section(index, name)
        assert "(an earlier session, tiny mode" in section, name
        assert f"`{docs[name]['results_file']}`" in section, name
