"""Ops that need the whole stream (limit, dedupe, aggregate) on a real local Ray: batches cross them
through the object store, their state lives in one actor, and the ops fused after them still run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.runtime import RunSummary, run_checked

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _source(tmp_path: Path, rows: int) -> Path:
    src = tmp_path / "in.csv"
    src.write_text(
        "id,key,amount\n" + "".join(f"{i},k{i % 7},{i % 10}\n" for i in range(rows)), encoding="utf-8"
    )
    return src


def _run(
    tmp_path: Path, middle: str, rows: int = 5_000, *overrides: str, resume: str | None = None
) -> RunSummary:
    src = _source(tmp_path, rows)
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: barriers
nodes:
  input:
    op: read_csv
    path: {src}
    split_bytes: 4KiB
    batch_rows: 100
    column_types: {{id: int64, key: string, amount: int64}}
{middle}
  output: {{op: write_parquet, input: last, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    return run_checked(check_file(str(path), overrides=overrides), resume=resume, progress=False)


def test_limit_keeps_the_first_rows_in_stream_order_and_stops_reading(tmp_path: Path) -> None:
    summary = _run(
        tmp_path,
        """  odd: {op: filter, input: input, where: "id % 2 = 1"}
  last: {op: limit, input: odd, n: 120}""",
        20_000,
    )
    assert summary.status == "succeeded", summary.error
    ids = sorted(pq.read_table(tmp_path / "out")["id"].to_pylist())
    assert ids == list(range(1, 240, 2))
    assert summary.nodes["last"].rows == 120
    # once satisfied, no further splits were scheduled: far fewer rows were read than exist
    assert summary.nodes["input"].rows < 20_000 / 2


def test_dedupe_keeps_one_row_per_key_across_splits(tmp_path: Path) -> None:
    summary = _run(tmp_path, "  last: {op: dedupe, input: input, keys: [key]}")
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(tmp_path / "out")
    assert sorted(table["key"].to_pylist()) == [f"k{i}" for i in range(7)]
    assert summary.nodes["last"].rows == 7 and summary.nodes["last"].rows_in == 5_000


def test_aggregate_by_key_then_a_fused_transform(tmp_path: Path) -> None:
    summary = _run(
        tmp_path,
        """  agg:
    op: aggregate
    input: input
    group_by: [key]
    aggregations:
      n: {fn: count}
      total: {fn: sum, column: amount}
      low: {fn: min, column: amount}
      high: {fn: max, column: amount}
      avg: {fn: mean, column: amount}
  last: {op: sql, input: agg, query: "SELECT *, total * 2 AS twice FROM batch"}""",
    )
    assert summary.status == "succeeded", summary.error
    got = {r["key"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    for k in range(7):
        amounts = [i % 10 for i in range(5_000) if i % 7 == k]
        row = got[f"k{k}"]
        assert row["n"] == len(amounts) and row["total"] == sum(amounts)
        assert (row["low"], row["high"]) == (min(amounts), max(amounts))
        assert row["avg"] == pytest.approx(sum(amounts) / len(amounts))
        assert row["twice"] == 2 * sum(amounts)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows"] == 7


def test_two_barriers_in_a_chain_and_a_global_aggregate(tmp_path: Path) -> None:
    summary = _run(
        tmp_path,
        """  unique: {op: dedupe, input: input, keys: [amount]}
  last:
    op: aggregate
    input: unique
    aggregations:
      groups: {fn: count}
      amounts: {fn: collect, column: amount}""",
    )
    assert summary.status == "succeeded", summary.error
    (row,) = pq.read_table(tmp_path / "out").to_pylist()
    assert row["groups"] == 10
    assert Counter(row["amounts"]) == Counter(range(10))


def test_resume_reruns_a_barrier_stage_from_the_start(tmp_path: Path) -> None:
    middle = "  last: {op: dedupe, input: input, keys: [key]}"
    first = _run(tmp_path, middle)
    (tmp_path / "out" / "_manifest.json").unlink()
    again = _run(tmp_path, middle, resume=first.run_id)
    assert again.status == "succeeded", again.error
    assert sorted(pq.read_table(tmp_path / "out")["key"].to_pylist()) == [f"k{i}" for i in range(7)]
    assert again.nodes["input"].rows == 5_000


def test_a_failure_before_a_barrier_fails_the_run_cleanly(tmp_path: Path) -> None:
    summary = _run(
        tmp_path,
        """  boom: {op: map_batches, input: input, fn: "tests.integration.udfs:fail_on_id_seven"}
  last: {op: dedupe, input: boom, keys: [key]}""",
        200,
    )
    assert summary.status == "failed"
    assert "node 'boom'" in (summary.error or "") and "id 7" in (summary.error or "")
    assert not (tmp_path / "out" / "_manifest.json").exists()
