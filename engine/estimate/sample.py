"""Reading a source's sample, and counting (or estimating) its rows, in this process and without Ray.

Parquet sources and one-row-per-file text sources read their first rows and know their row count
exactly (Parquet metadata, the number of files). Line and CSV files read a growing prefix of each file
until the sample is full; their row count is the rows read scaled by input bytes / bytes read, and is
exact only when the sample read the whole input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.files import filesystem
from connectors.readers import Reader, Split, reader_for
from connectors.sources import FileSource, ReadParquet, ReadText
from engine.estimate.results import SourceEstimate
from engine.plan import PlanNode

_FIRST_RANGE_BYTES = 256 * 1024
"""The first byte range read from a line or CSV file; it grows fourfold until it holds the sample."""
_WHOLE_FILE = 1 << 62
"""Split size that makes one split per file: planning then never scans a large file's quotes."""


@dataclass(frozen=True)
class Sample:
    """The first rows of a source, and what they say about the whole of it."""

    table: pa.Table
    source: SourceEstimate


def sample_source(node: PlanNode, urls: list[str], want: int) -> Sample:
    """The first ``want`` rows of a source, and its row count (exact or estimated from bytes)."""
    spec: FileSource = node.spec  # type: ignore[assignment]
    reader = reader_for(spec)
    splits = reader.splits(spec.model_copy(update={"split_bytes": _WHOLE_FILE}), node.id, urls)
    malformed = [0]

    def bad_row(error: str, row: dict[str, Any]) -> None:
        malformed[0] += 1

    def first_rows(tables: list[pa.Table]) -> pa.Table:
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive").slice(0, want)

    size = sum(s.end - s.start for s in splits)
    if isinstance(spec, ReadParquet) or (isinstance(spec, ReadText) and spec.mode == "file"):
        tables = list(_take(reader, spec, splits, want, bad_row))
        if isinstance(spec, ReadParquet):
            rows, how = _parquet_rows(splits), "Parquet metadata"
        else:
            rows, how = len(splits), "one row per file"
        table = first_rows(tables)
        return Sample(table, SourceEstimate(node.id, rows, "exact", how, table.num_rows, size, malformed[0]))

    # Line and CSV files: read a growing prefix of each file until the sample is full, then scale the
    # rows read by input bytes / bytes read (header lines are not rows).
    tables = []
    rows_read = bytes_read = 0
    whole = True
    for split in splits:
        if rows_read >= want:
            whole = False
            break
        header = len(split.header or b"")
        end = min(split.end, _FIRST_RANGE_BYTES)
        before = malformed[0]
        while True:
            malformed[0] = before  # a longer prefix of the file meets its malformed rows again
            got = list(reader.read(spec, dataclasses.replace(split, end=end), max(want, 1), bad_row))
            count = sum(t.num_rows for t in got)
            if rows_read + count >= want or end >= split.end:
                break
            end = min(split.end, end * 4)
        tables.extend(got)
        rows_read += count
        bytes_read += max(end - header, 0)
        whole = whole and end >= split.end
    data_bytes = sum(max(s.end - len(s.header or b""), 0) for s in splits)
    table = first_rows(tables)
    if whole:
        source = SourceEstimate(
            node.id, rows_read, "exact", "the whole input was read", table.num_rows, size, malformed[0]
        )
    else:
        rows = round(rows_read * data_bytes / bytes_read) if bytes_read else 0
        how = f"{rows_read:,} rows in the first {_size(bytes_read)} of {_size(data_bytes)}, scaled by bytes"
        source = SourceEstimate(node.id, rows, "estimated", how, table.num_rows, size, malformed[0])
    return Sample(table, source)


def _take(
    reader: Reader, spec: FileSource, splits: list[Split], want: int, bad_row: Callable[..., None]
) -> Iterator[pa.Table]:
    got = 0
    for split in splits:
        for table in reader.read(spec, split, max(want, 1), bad_row):
            yield table
            got += table.num_rows
            if got >= want:
                return


def _parquet_rows(splits: list[Split]) -> int:
    rows = 0
    for url in dict.fromkeys(s.url for s in splits):
        fs, path = filesystem(url)
        with fs.open(path, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    return rows


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
