"""Big inputs: a 1 GB CSV with every quoting hazard becomes Parquet row-exact, with an object store a
tenth of the input's size; and two pipelines share one cluster without interfering."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.runtime import RunSummary, run_checked
from tests.cli import run_headrace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"

TEXTS = [
    'he said "hi", then left',
    "first line\nsecond line, with comma",
    "Grüße, 中文 — ✓",
    "",
    'quote at end"',
    "plain words only",
    "\r\nwindows newline inside",
]


def _rows(start: int, count: int) -> pa.Table:
    """Rows ``start .. start+count`` of the generated data, computed, so the truth is known exactly."""
    ids = pa.array(range(start, start + count), pa.int64())
    which = pc.subtract(ids, pc.multiply(pc.divide(ids, len(TEXTS)), len(TEXTS)))  # ids % len(TEXTS)
    texts = pc.binary_join_element_wise(pa.array(TEXTS).take(which), pc.cast(ids, pa.string()), " #")
    return pa.table({"id": ids, "text": texts, "n": pc.multiply(pc.cast(ids, pa.float64()), 0.5)})


def _write_big_csv(path: Path, target_bytes: int) -> int:
    """Write a CSV of at least ``target_bytes`` (pyarrow quotes what needs quoting); returns its rows."""
    chunk = 500_000
    written = 0
    with path.open("wb") as sink, pacsv.CSVWriter(sink, _rows(0, 1).schema) as writer:
        while sink.tell() < target_bytes:
            writer.write_table(_rows(written, chunk))
            written += chunk
    return written


@pytest.mark.timeout(900)
def test_one_gigabyte_csv_to_parquet_is_row_exact_with_a_small_object_store(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    rows = _write_big_csv(src, 1_050_000_000)
    size = src.stat().st_size
    store = 96 * 1024 * 1024
    assert size >= 10 * store
    out = tmp_path / "parquet"
    proc = run_headrace(
        "run",
        EXAMPLES / "csv_to_parquet.yaml",
        "--set",
        f"nodes.input.path={src}",
        "--set",
        f"nodes.output.path={out}",
        "--set",
        "nodes.input.column_types={id: int64, text: string, n: double}",
        "--json",
        env={"HEADRACE_OBJECT_STORE_BYTES": str(store)},
        timeout=800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["nodes"]["output"]["rows"] == rows
    got = pq.read_table(out).sort_by("id")
    assert len(list(out.glob("part-*.parquet"))) >= size // (64 * 1024 * 1024)  # it was split
    # compared with the generated truth, not with a pyarrow read of the file: pyarrow's own reader
    # drops the "\n" of a quoted "\r\n" that straddles two of its blocks
    assert got.num_rows == rows
    assert got.equals(_rows(0, rows))


@pytest.mark.usefixtures("ray_cluster")
def test_two_pipelines_at_once_keep_their_own_ids_outputs_and_counts(tmp_path: Path) -> None:
    results: dict[str, RunSummary] = {}
    sources = {}
    for name, count in (("a", 3_000), ("b", 5_000)):
        src = tmp_path / f"{name}.csv"
        src.write_text("k\n" + "".join(f"{name}{i}\n" for i in range(count)), encoding="utf-8")
        sources[name] = count

    def run(name: str) -> None:
        checked = check_file(
            str(EXAMPLES / "csv_to_parquet.yaml"),
            overrides=[
                f"nodes.input.path={tmp_path / name}.csv",
                f"nodes.output.path={tmp_path / name}_out",
                "nodes.input.split_bytes=2KiB",
            ],
        )
        results[name] = run_checked(checked, progress=False)

    threads = [threading.Thread(target=run, args=(name,)) for name in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(results) == {"a", "b"}
    assert results["a"].run_id != results["b"].run_id
    for name, count in sources.items():
        summary = results[name]
        assert summary.status == "succeeded", summary.error
        assert summary.nodes["output"].rows == count
        keys = pq.read_table(tmp_path / f"{name}_out")["k"].to_pylist()
        assert sorted(keys) == sorted(f"{name}{i}" for i in range(count))
        manifest = json.loads((tmp_path / f"{name}_out" / "_manifest.json").read_text())
        assert manifest["run_id"] == summary.run_id
