"""Row-level failures: dead-lettered or skipped by policy, bounded by an error budget, never silent."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.records import RunView, open_records
from engine.runtime import run_checked
from engine.runtime.graphs import default_url

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _run(tmp_path: Path, on_error: str, source_on_error: str = "", rows: str = "") -> tuple[object, Path]:
    src = tmp_path / "in.csv"
    src.write_text(rows or "n\n" + "".join(f"{i}\n" for i in range(20)), encoding="utf-8")
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: tolerant
nodes:
  input: {{op: read_csv, path: {src}, batch_rows: 8{source_on_error}}}
  check:
    op: map_batches
    input: input
    fn: tests.integration.udfs:explode_on_seven
    on_error: {on_error}
  output: {{op: write_parquet, input: check, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    return run_checked(check_file(str(path)), progress=False), tmp_path / "out"


def test_failing_rows_go_to_the_dead_letter_sink_and_the_rest_is_written(tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    summary, out = _run(tmp_path, f"{{mode: dead_letter, dead_letter_path: {dead}}}")
    assert summary.status == "succeeded", summary.error
    assert sorted(pq.read_table(out)["n"].to_pylist()) == [i for i in range(20) if i != 7]
    assert summary.nodes["check"].failed == 1
    (record,) = [json.loads(line) for f in dead.glob("dead-*.jsonl") for line in f.read_text().splitlines()]
    assert record["node"] == "check" and record["row"] == {"n": 7}
    assert "n must not be 7" in record["error"] and record["input"].endswith("in.csv")
    assert record["split_bytes"][0] == 0
    assert summary.dead_letters and summary.dead_letters[0].endswith(".jsonl")
    assert "dead letters" in summary.render()
    # the run's record has the same, under the node whose row failed
    view = RunView.of(open_records(default_url()).events(summary.run_id))  # type: ignore[attr-defined]
    assert view.status == "succeeded" and view.dead_letters == summary.dead_letters  # type: ignore[attr-defined]
    assert (view.nodes["check"].dead_letter_rows, view.nodes["output"].dead_letter_rows) == (1, 0)
    assert view.nodes["check"].failed == 1 and view.nodes["output"].rows == 19


def test_skip_mode_counts_but_writes_no_dead_letters(tmp_path: Path) -> None:
    summary, out = _run(tmp_path, "{mode: skip}")
    assert summary.status == "succeeded"
    assert pq.read_table(out).num_rows == 19 and summary.nodes["check"].failed == 1
    assert summary.as_dict()["nodes"]["check"]["failed_rows"] == 1


def test_the_error_budget_fails_the_run(tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    summary, _ = _run(tmp_path, f"{{mode: dead_letter, dead_letter_path: {dead}, max_failed_rows: 0}}")
    assert summary.status == "failed"
    assert "1 rows failed, more than max_failed_rows 0" in (summary.error or "")
    assert str(dead) in (summary.error or "")
    ratio_dir = tmp_path / "ratio"
    ratio_dir.mkdir()
    ratio, _ = _run(ratio_dir, "{mode: skip, max_failed_ratio: 0.01}")
    assert ratio.status == "failed"
    assert "5.0% of rows failed, more than max_failed_ratio 1.0%" in (ratio.error or "")


def test_malformed_csv_rows_are_dead_lettered_by_the_source(tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    summary, out = _run(
        tmp_path,
        "{mode: skip}",
        source_on_error=f", on_error: {{mode: dead_letter, dead_letter_path: {dead}}}",
        rows="n\n1\n2,oops\n3\n",
    )
    assert summary.status == "succeeded", summary.error
    assert sorted(pq.read_table(out)["n"].to_pylist()) == [1, 3]
    (record,) = [json.loads(line) for f in dead.glob("dead-*.jsonl") for line in f.read_text().splitlines()]
    assert record["node"] == "input" and record["row"] == {"text": "2,oops"}
    assert "expected 1 columns, got 2" in record["error"]
