"""``headrace bench``'s logic without Ray: variants, sizes, scratch inputs, retried repeats, figures
from a run summary, baselines and the HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from engine.bench import harness
from engine.bench.baseline import compare, describe, load_baseline, machine_kind, parse_share, save_baseline
from engine.bench.figures import rate_limit_share, repeat_figures, variant_figures
from engine.bench.inputs import build_input, parse_size
from engine.bench.pipeline import RateLimit, Source, inspect_pipeline
from engine.bench.report import render_bench_report
from engine.bench.runners import RunOutcome
from engine.bench.session import parse_vary, variant_name, variants
from engine.bench.table import render_table

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"
TICKETS = EXAMPLES / "data" / "tickets.csv"


def test_vary_runs_every_combination_of_the_values() -> None:
    vary = [parse_vary("defaults.batch_rows=10,100"), parse_vary("nodes.triage.concurrency=1,2,4")]
    combos = variants(vary)
    assert len(combos) == 6
    assert {(c["defaults.batch_rows"], c["nodes.triage.concurrency"]) for c in combos} == {
        (b, c) for b in ("10", "100") for c in ("1", "2", "4")
    }
    assert variants([]) == [{}] and variant_name({}) == "default"
    assert variant_name(combos[0]) == "defaults.batch_rows=10 nodes.triage.concurrency=1"
    for bad in ("defaults.batch_rows", "=1,2", "k=1,,2"):
        with pytest.raises(ValueError, match="KEY=V1,V2"):
            parse_vary(bad)
    with pytest.raises(ValueError, match="twice"):
        variants([("k", ("1",)), ("k", ("2",))])


def test_sizes_and_shares_parse_in_decimal_and_binary_units() -> None:
    assert parse_size("1GB") == 10**9
    assert parse_size("200 MB") == 200 * 10**6
    assert parse_size("64KiB") == 65536
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("4096") == 4096
    for bad in ("1 parsec", "GB", "0MB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_share("10%") == pytest.approx(0.1)
    assert parse_share("0.25") == pytest.approx(0.25)
    with pytest.raises(ValueError):
        parse_share("ten")


def test_an_input_of_a_size_repeats_the_sources_csv_records_and_reads_back_the_same(tmp_path: Path) -> None:
    source = Source("input", "read_csv", (str(TICKETS),))
    original = pcsv.read_csv(TICKETS)
    built = build_input(source, 100_000, str(tmp_path))
    assert 100_000 <= built.bytes < 100_000 + 500  # within one record of the size
    table = pcsv.read_csv(built.path)
    assert table.schema == original.schema and table.num_rows == built.rows
    copies = built.rows // original.num_rows
    assert copies == 10 and built.copies > 10
    # every copy is the original, row for row: quoted commas, quotes and newlines survived
    assert table.slice(0, original.num_rows).equals(original)
    assert table.slice(original.num_rows * 3, original.num_rows).equals(original)
    sample = build_input(source, 2_000, str(tmp_path / "small"))
    small = pcsv.read_csv(sample.path)
    assert sample.copies < 1 and small.equals(original.slice(0, small.num_rows))


def test_an_input_of_a_size_repeats_parquet_rows(tmp_path: Path) -> None:
    original = pa.table({"id": list(range(1000)), "text": [f"row {i}" for i in range(1000)]})
    pq.write_table(original, tmp_path / "in.parquet")
    built = build_input(Source("src", "read_parquet", (str(tmp_path / "in.parquet"),)), 40_000, str(tmp_path))
    table = pq.read_table(built.path)
    assert table.num_rows == built.rows > 1000
    assert table.slice(1000, 1000).equals(original)


def test_the_pipelines_sources_sinks_and_llm_limits_are_read_from_the_file() -> None:
    facts = inspect_pipeline(
        str(EXAMPLES / "llm_classify.yaml"),
        ["nodes.classify.provider=offline", "providers.offline.rate_limits.requests_per_minute=600"],
    )
    assert [s.node for s in facts.sources] == ["input"]
    assert facts.sources[0].files == (str(EXAMPLES / "data" / "messages.csv"),)
    assert facts.sinks == ("output",) and facts.dead_letter_nodes == ("classify",)
    assert facts.rate_limits["classify"] == RateLimit("offline", 600.0)
    assert facts.scratch_overrides("/s") == [
        "nodes.output.path=/s/output",
        "nodes.classify.on_error.dead_letter_path=/s/classify.dead",
    ]


def test_a_disturbed_repeat_is_run_again_at_most_the_allowed_times() -> None:
    shares = iter([0.5, 0.0, 0.9, 0.9, 0.9, 0.0])
    measured = harness.repeat_quietly(lambda: next(shares), 3, lambda share: share, extra_repeats=2)
    assert measured.discarded == [0.5, 0.9]
    assert measured.kept == [0.0, 0.9, 0.9]  # disturbed ones are kept once no reruns are left


def test_benchmarks_use_the_one_harness() -> None:
    import benchmarks.harness as families

    for name in ("MemorySampler", "MemoryPeaks", "repeat_quietly", "shmem_bytes", "summarise", "sync_disks"):
        assert getattr(families, name) is getattr(harness, name), name
    assert families.DISTURBED_SHARE == harness.DISTURBED_SHARE


def test_the_share_of_a_rate_limit_is_the_largest_of_its_kinds() -> None:
    limit = RateLimit("p", requests_per_minute=120, output_tokens_per_minute=6000)
    # 30 attempts in 10 s = 180/min of 120; 500 output tokens in 10 s = 3000/min of 6000
    assert rate_limit_share(limit, 30, 10_000, 500, 10.0) == pytest.approx(1.5)
    assert rate_limit_share(None, 30, 0, 0, 10.0) is None


def _summary(rows: int, seconds: float, llm_rows: int) -> dict[str, Any]:
    return {
        "run_id": "r-1",
        "status": "succeeded",
        "seconds": seconds,
        "retries": 1,
        "nodes": {
            "input": {"op": "read_csv", "rows": rows, "seconds": 0.5, "bytes_read": 2_000_000},
            "triage": {
                "op": "llm_classify",
                "rows": llm_rows,
                "seconds": 2.0,
                "bytes_read": 0,
                "llm": {
                    "requests": 90,
                    "cached_requests": 0,
                    "failed_requests": 10,
                    "input_tokens": 3000,
                    "output_tokens": 1000,
                    "cost_usd": 0.05,
                },
            },
        },
    }


def _outcome(wall: float, share: float = 0.0) -> RunOutcome:
    tree = {
        "tree_cpu_s": 3.0,
        "peak_memory_mb": 500.0,
        "peak_object_store_mb": 40.0,
        "other_cpu_share": share,
    }
    return RunOutcome(_summary(1000, wall, 100), wall, tree, [(0.0, 100.0), (wall, 500.0)], {"host-a": tree})


def test_a_repeats_figures_come_from_the_summary_and_the_tree() -> None:
    facts = inspect_pipeline(
        str(EXAMPLES / "quickstart.yaml"), ["providers.offline.rate_limits.requests_per_minute=1200"]
    )
    f = repeat_figures(_outcome(4.0), facts)
    assert f["rows_per_s"] == 250.0 and f["input_mb_per_s"] == 0.5  # 1,000 rows, 2 MB in 4 s
    assert f["cpu_s_per_gb"] == 1500.0  # 3 CPU-s over 0.002 GB
    assert f["nodes"]["input"]["rows_per_s"] == 2000.0 and f["nodes"]["triage"]["seconds"] == 2.0
    llm = f["llm"]["triage"]
    assert llm["requests_per_s"] == 22.5 and llm["tokens_per_s"] == 1000.0
    assert llm["cost_per_1k_rows"] == pytest.approx(0.5) and llm["retries"] == 10
    assert llm["rate_limit_share"] == pytest.approx(100 * 15 / 1200)  # 100 attempts in 4 s: 1500/min
    assert f["split_retries"] == 1 and f["peak_object_store_mb"] == 40.0


def _doc(walls: list[float], tmp_home: Path | None = None) -> dict[str, Any]:
    facts = inspect_pipeline(str(EXAMPLES / "quickstart.yaml"), [])
    repeats = [repeat_figures(_outcome(w), facts) for w in walls]
    machine = harness.machine_info()
    where = {"mode": "local", "nodes": 1}
    return {
        "pipeline": "quickstart",
        "path": str(EXAMPLES / "quickstart.yaml"),
        "machine": machine,
        "machine_kind": machine_kind(machine, where),
        "where": where,
        "settings": {
            "repeats": len(walls),
            "warmup": 0,
            "sets": [],
            "vary": {},
            "input_size": None,
            "outputs": "scratch",
            "cache": False,
            "disturbed_share": 0.2,
            "extra_repeats": 2,
        },
        "inputs": [],
        "variants": [
            {
                "name": "default",
                "settings": {},
                "repeats": repeats,
                "discarded_repeats": [],
                "figures": variant_figures(repeats),
                "memory_timeline": [[0.0, 100.0], [1.0, 300.0]],
            }
        ],
        "baseline": None,
    }


def test_a_variants_figures_are_the_median_and_range_over_repeats() -> None:
    figures = _doc([4.0, 2.0, 3.0])["variants"][0]["figures"]
    assert figures["wall_s"] == {"median": 3.0, "min": 2.0, "max": 4.0}
    assert figures["rows_per_s"] == {"median": 333.3, "min": 250.0, "max": 500.0}
    assert figures["nodes"]["triage"]["seconds"]["median"] == 2.0
    assert figures["llm"]["triage"]["retries"]["max"] == 10
    assert figures["machines"]["host-a"]["peak_memory_mb"]["median"] == 500.0


def test_a_baseline_is_saved_under_headrace_home_and_a_slower_run_is_a_named_regression(
    tmp_path: Path,
) -> None:
    env = {"HEADRACE_HOME": str(tmp_path)}
    path = save_baseline("main", _doc([2.0, 2.0]), env)
    assert path == tmp_path / "bench" / "baselines" / "main.json"
    saved = load_baseline("main", env)
    slower = compare(_doc([2.5, 2.5]), saved, 0.10)
    assert slower["compared"] is True and "same kind of machine" in slower["reason"]
    named = {r["figure"] for r in slower["regressions"]}
    assert named == {"wall_s", "rows_per_s", "input_mb_per_s"}
    assert any("wall time (wall_s) 2.5 against 2" in line for line in describe(slower))
    assert compare(_doc([2.1, 2.1]), saved, 0.10)["regressions"] == []  # within 10%


def test_a_baseline_of_another_kind_of_machine_is_not_compared(tmp_path: Path) -> None:
    env = {"HEADRACE_HOME": str(tmp_path)}
    save_baseline("ci", _doc([1.0]), env)
    saved = json.loads((tmp_path / "bench" / "baselines" / "ci.json").read_text())
    saved["machine_kind"]["cores"] = 64
    result = compare(_doc([9.0]), saved, 0.10)
    assert result["compared"] is False and result["regressions"] == []
    assert "another kind of machine" in result["reason"] and "cores: 64 then" in result["reason"]


def test_a_missing_or_badly_named_baseline_is_refused(tmp_path: Path) -> None:
    from engine.bench.baseline import BaselineError

    with pytest.raises(BaselineError, match="no baseline 'nope'"):
        load_baseline("nope", {"HEADRACE_HOME": str(tmp_path)})
    with pytest.raises(BaselineError, match="letters, digits"):
        load_baseline("../x", {"HEADRACE_HOME": str(tmp_path)})


def test_the_table_and_the_page_show_every_figure() -> None:
    doc = _doc([2.0, 3.0])
    text = render_table(doc)
    assert "2.500 (2.000-3.000)" in text  # wall time: median (min-max)
    assert "node triage: 50 rows/s, 2.000 s" in text  # 100 rows in 2 s, the same every repeat
    assert "llm triage:" in text and "no rate limit configured" in text
    page = render_bench_report(doc)
    assert (
        page.startswith("<!doctype html>")
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    for css in ('class="chart throughput"', 'class="chart memory"', 'class="chart node-time"'):
        assert css in page


def test_an_invalid_pipeline_is_refused_located_before_any_run_with_one_json_object(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nnodes:\n  input: {op: read_csv, pth: x.csv}\n", encoding="utf-8")
    env = {"HEADRACE_HOME": str(tmp_path), "HEADRACE_ENGINE": ""}
    result = CliRunner().invoke(cli, ["bench", str(bad), "--json", "--no-engine"], env=env)
    assert result.exit_code == 1
    (line,) = result.stdout.strip().splitlines()
    refused = json.loads(line)
    assert refused["exit_code"] == 1 and f"{bad}:4:" in refused["error"]
    assert f"{bad}:4:" in result.stderr
    for wrong, hint in (
        ("--vary", "KEY=V1,V2"),
        ("--input-size", "not a size"),
        ("--max-regression", "share"),
    ):
        value = "nope"
        usage = CliRunner().invoke(cli, ["bench", str(bad), wrong, value], env=env)
        assert usage.exit_code == 2 and hint in usage.output, usage.output
