"""What sinks do: write part files under a temporary name, rename each into place when complete, and
finish a run's output with a manifest, so no reader ever sees half a file."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.files import filesystem, is_local
from connectors.sinks import FileSink, WriteCsv, WriteParquet
from engine.errors import DataError


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
        codec = None if self.spec.compression == "none" else self.spec.compression
        self.writer = pq.ParquetWriter(
            self.handle,
            schema,
            compression=codec,
            compression_level=self.spec.compression_level,
            use_dictionary=self.spec.use_dictionary,
        )

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=self.spec.row_group_rows)

    def _close(self) -> None:
        self.writer.close()


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


WRITERS: dict[str, type[_Part]] = {
    "write_parquet": _ParquetPart,
    "write_csv": _CsvPart,
    "write_jsonl": _JsonlPart,
}
"""The part writer of each sink op."""


def open_part(spec: FileSink, folder: str, split_index: int, split_id: str) -> PartWriter:
    """A writer for the part of split ``split_index`` in ``folder``."""
    return WRITERS[spec.op](spec, folder, split_index, split_id)
