"""What sinks do: write part files under a temporary name, rename each into place when complete, and
finish a run's output with a manifest, so no reader ever sees half a file."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.files import filesystem
from connectors.sinks import FileSink, WriteCsv, WriteParquet
from engine.errors import DataError, RunError

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class PartInfo:
    """A committed part file (``file`` is None when its split produced no rows)."""

    split_index: int
    split_id: str
    file: str | None
    rows: int
    bytes: int


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
        self.name = f"part-{split_index:05d}{self.ext}"
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
            self.handle = self.fs.open(self.tmp, "wb")
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


def prepare_output(spec: FileSink, folder: str, node: str) -> None:
    """Make ``folder`` ready for a new run: refuse to clobber an earlier run unless `overwrite`."""
    fs, path = filesystem(folder)
    if fs.exists(path) and not fs.isdir(path):
        raise RunError(f"node '{node}': output path {folder} is a file; sinks write a folder of parts")
    if not fs.exists(path):
        fs.makedirs(path, exist_ok=True)
        return
    ours = [p for p in fs.ls(path, detail=False) if _is_ours(p)]
    if ours and not spec.overwrite:
        raise RunError(
            f"node '{node}': output folder {folder} already holds the output of an earlier run; "
            "set `overwrite: true` on the node, or write somewhere else"
        )
    for p in ours:
        fs.rm(p)


def _is_ours(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (
        name == MANIFEST or name.startswith("part-") or (name.startswith(".part-") and name.endswith(".tmp"))
    )


def write_manifest(folder: str, run_id: str, pipeline: str, spec_hash: str, parts: list[PartInfo]) -> str:
    """Write the manifest of a finished output (atomically); returns its URL."""
    fs, path = filesystem(folder)
    body = {
        "run_id": run_id,
        "pipeline": pipeline,
        "spec_hash": spec_hash,
        "rows": sum(p.rows for p in parts),
        "parts": [asdict(p) for p in sorted(parts, key=lambda p: p.split_index)],
    }
    tmp = f"{path}/.{MANIFEST}.{os.getpid()}.tmp"
    with fs.open(tmp, "w") as fh:
        json.dump(body, fh, indent=2)
    fs.mv(tmp, f"{path}/{MANIFEST}")
    return f"{folder}/{MANIFEST}"
