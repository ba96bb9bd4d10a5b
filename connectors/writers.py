"""What sinks do: write part files under a temporary name, rename each into place when complete, and
finish a run's output with a manifest, so no reader ever sees half a file."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.files import filesystem, is_local
from connectors.sinks import FileSink, WriteCsv, WriteParquet
from engine.errors import DataError, HeadraceError
from engine.spec.registry import behaviour


@dataclass(frozen=True)
class PartInfo:
    """A committed part file (``file`` is None when its split produced no rows)."""

    split_index: int
    split_id: str
    file: str | None
    rows: int
    bytes: int


def part_name(split_index: int, ext: str) -> str:
    """The deterministic name of the part of split ``split_index``."""
    return f"part-{split_index:05d}{ext}"


def part_index(name: str) -> int | None:
    """The split index a part file name encodes, or None for other files."""
    if not name.startswith("part-"):
        return None
    digits = name[5:].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


class PartWriter(Protocol):
    """Writes one part; nothing is visible under the final name until :meth:`commit`."""

    def write(self, table: pa.Table) -> None:
        """Append rows."""
        ...

    def commit(self) -> PartInfo:
        """Close and rename into place."""
        ...

    def abort(self) -> None:
        """Remove the temporary file."""
        ...


class _Part:
    ext = ""

    def __init__(self, spec: Any, folder: str, split_index: int, split_id: str) -> None:
        self.spec = spec
        self.fs, self.folder = filesystem(folder)
        self.name = part_name(split_index, self.ext)
        self.final = f"{self.folder}/{self.name}"
        self.tmp = f"{self.folder}/.{self.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.split_index, self.split_id = split_index, split_id
        self.rows = 0
        self.schema: pa.Schema | None = None
        self.handle: Any = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.schema is None:
            self.schema = table.schema
            # a native Arrow file for local disks: writers then never call back into Python per chunk
            self.handle = pa.OSFile(self.tmp, "wb") if is_local(self.fs) else self.fs.open(self.tmp, "wb")
            self._open(table.schema)
        elif table.schema != self.schema:
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"batch schema changed within part {self.name}: {exc}") from None
        self._write(table)
        self.rows += table.num_rows

    def commit(self) -> PartInfo:
        if self.handle is None:
            return PartInfo(self.split_index, self.split_id, None, 0, 0)
        self._close()
        self.handle.close()
        self.fs.mv(self.tmp, self.final)
        return PartInfo(self.split_index, self.split_id, self.name, self.rows, int(self.fs.size(self.final)))

    def abort(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            finally:
                if self.fs.exists(self.tmp):
                    self.fs.rm(self.tmp)

    def _open(self, schema: pa.Schema) -> None:
        raise NotImplementedError

    def _write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class _ParquetPart(_Part):
    ext = ".parquet"
    spec: WriteParquet

    def _open(self, schema: pa.Schema) -> None:
        self.writer: pq.ParquetWriter | None = None

    def _write(self, table: pa.Table) -> None:
        if self.writer is None:  # the first batch tells which columns a dictionary would pay for
            codec = None if self.spec.compression == "none" else self.spec.compression
            dictionary = (
                dictionary_columns(table, self.spec.row_group_rows) if self.spec.use_dictionary else False
            )
            self.writer = pq.ParquetWriter(
                self.handle,
                table.schema,
                compression=codec,
                compression_level=self.spec.compression_level,
                use_dictionary=dictionary,
            )
        self.writer.write_table(table, row_group_size=self.spec.row_group_rows)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()


DICTIONARY_PAGE_BYTES = 1 << 20
"""pyarrow's ``dictionary_pagesize_limit``: a column chunk whose dictionary outgrows it falls back to
plain encoding."""

_SAMPLE_ROWS = 4096


def dictionary_columns(table: pa.Table, group_rows: int) -> bool | list[str]:
    """The columns worth dictionary-encoding (``True``: all of them), judged from ``table``.

    pyarrow dictionary-encodes every column, and gives a column chunk up for plain encoding once its
    dictionary outgrows :data:`DICTIONARY_PAGE_BYTES`. For a column of (nearly) unique values, such
    as ids or free text, the dictionary cannot pay, and hashing every value into it cost a sixth of
    the write. A column is left out when its distinct values (counted when the sample is the whole
    table, else estimated from a sample of rows by their collisions, ``n^2 / 2c``, the birthday
    estimate) are nearly as many as the rows, or would fill a row group's dictionary past that
    limit. Nested columns are left to pyarrow (the list names top-level columns only).
    """
    rows = table.num_rows
    if rows == 0 or any(pa.types.is_nested(f.type) for f in table.schema):
        return True
    picks = pa.array(np.linspace(0, rows - 1, min(rows, _SAMPLE_ROWS)).astype(np.int64))
    group = min(rows, group_rows)
    keep: list[str] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        sample = column.take(picks)
        n, seen = len(sample), pc.count_distinct(sample, mode="all").as_py()
        if n == rows:
            distinct = float(seen)  # the sample is the whole table: the count is exact
        else:
            collisions = n - seen
            distinct = n * n / (2 * collisions) if collisions else float("inf")
        entry_bytes = column.nbytes / rows
        if distinct < 0.9 * group and min(distinct, group) * entry_bytes <= DICTIONARY_PAGE_BYTES:
            keep.append(name)
    return True if len(keep) == table.num_columns else keep


class _CsvPart(_Part):
    ext = ".csv"
    spec: WriteCsv

    def _open(self, schema: pa.Schema) -> None:
        options = pacsv.WriteOptions(include_header=self.spec.header, delimiter=self.spec.delimiter)
        self.writer = pacsv.CSVWriter(self.handle, schema, write_options=options)

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def _close(self) -> None:
        self.writer.close()


class _JsonlPart(_Part):
    ext = ".jsonl"

    def _open(self, schema: pa.Schema) -> None:
        pass

    def _write(self, table: pa.Table) -> None:
        lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in table.to_pylist())
        self.handle.write(lines.encode("utf-8"))


def open_part(spec: FileSink, folder: str, split_index: int, split_id: str) -> PartWriter:
    """A writer for the part of split ``split_index`` in ``folder``: the sink op's ``writer`` from the op
    registry, called as ``writer(spec, folder, split_index, split_id)``."""
    writer = behaviour(spec.op, "writer")
    if writer is None:
        raise HeadraceError(f"op '{spec.op}' has no writer registered (register_op(..., writer=...))")
    part: PartWriter = writer(spec, folder, split_index, split_id)
    return part
