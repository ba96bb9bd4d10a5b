"""Parquet parts: each batch is written as it comes, and dictionary encoding is left out only where
pyarrow would give it up anyway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from connectors.sinks import WriteParquet
from connectors.writers import dictionary_columns, open_part


def _spec(path: Path, **kw: object) -> WriteParquet:
    return WriteParquet(op="write_parquet", path=str(path), input="x", **kw)  # type: ignore[arg-type]


def _columns(n: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "kind": pa.array(rng.choice(["a", "b", "c"], n)),
            "bucket": rng.integers(0, 20_000, n),
            "text": pa.array([f"free text number {i} " * 4 for i in range(n)]),
        }
    )


def test_unique_columns_are_left_out_and_repeating_ones_kept() -> None:
    table = _columns(200_000)
    assert dictionary_columns(table, 1 << 20) == ["kind", "bucket"]


def test_a_repeating_column_keeps_its_dictionary_in_a_small_table_too() -> None:
    # 1,000 unique ids would make an 8 KB dictionary that pyarrow keeps, but one no smaller than
    # the ids themselves; 3 kinds repeat
    assert dictionary_columns(_columns(1_000), 1 << 20) == ["kind"]
    table = pa.table({"kind": pa.array(["a", "b"] * 500), "n": pa.array([1, 2, 3, 4] * 250)})
    assert dictionary_columns(table, 1 << 20) is True


def test_a_table_no_larger_than_the_sample_is_judged_by_its_exact_distinct_count() -> None:
    # 600 values over 1,000 rows: 400 repeats, which the birthday estimate (n^2 / 2c) would read as
    # 1,250 distinct values, more than the rows
    table = pa.table({"v": pa.array(np.arange(1_000) % 600), "id": np.arange(1_000)})
    assert dictionary_columns(table, 1 << 20) == ["v"]


def test_leaving_them_out_costs_no_space(tmp_path: Path) -> None:
    # pyarrow tries every column and gives up on the unique ones part-way: skipping the attempt
    # writes them plainly from the start, which is no bigger
    table = _columns(200_000)
    pq.write_table(table, tmp_path / "all.parquet", use_dictionary=True, row_group_size=1 << 20)
    chosen = dictionary_columns(table, 1 << 20)
    pq.write_table(table, tmp_path / "chosen.parquet", use_dictionary=chosen, row_group_size=1 << 20)
    every, ours = (tmp_path / "all.parquet").stat().st_size, (tmp_path / "chosen.parquet").stat().st_size
    assert ours <= 1.01 * every
    assert pq.read_table(tmp_path / "chosen.parquet").equals(table)


def test_nested_columns_are_left_to_pyarrow() -> None:
    table = pa.table({"id": np.arange(50_000), "tags": [[i] for i in range(50_000)]})
    assert dictionary_columns(table, 1 << 20) is True


def test_a_part_writes_the_chosen_encodings(tmp_path: Path) -> None:
    table = _columns(10_000)
    part = open_part(_spec(tmp_path, row_group_rows=4_000), str(tmp_path), 0, "s0")
    for start in range(0, table.num_rows, 5_000):
        part.write(table.slice(start, 5_000))
    info = part.commit()
    meta = pq.ParquetFile(tmp_path / str(info.file)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4_000, 1_000] * 2
    encodings = {
        meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings for i in range(4)
    }
    assert "RLE_DICTIONARY" in encodings["kind"] and "RLE_DICTIONARY" not in encodings["id"]
    assert pq.read_table(tmp_path / str(info.file)).equals(table)
    assert info.rows == 10_000


def test_dictionary_off_writes_every_column_plainly(tmp_path: Path) -> None:
    part = open_part(_spec(tmp_path, use_dictionary=False), str(tmp_path), 3, "s3")
    part.write(_columns(5_000))
    info = part.commit()
    group = pq.ParquetFile(tmp_path / str(info.file)).metadata.row_group(0)
    for i in range(group.num_columns):
        assert "RLE_DICTIONARY" not in group.column(i).encodings
