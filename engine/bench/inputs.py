"""Inputs of a chosen size for ``headrace bench --input-size``: a source's own rows, repeated (or cut,
for a smaller size) into a scratch file of about that size, in the source's format.

Text formats (CSV, JSON Lines, text lines) are built from whole records: the header once, then the
records, so quoting, delimiters and types read back exactly as the original's. A CSV is cut into
records with Python's csv reader (quoted fields may hold newlines); JSON Lines and text by lines.
Parquet is read with pyarrow and written as row groups of the original rows. Sizes are met to within
one record (text) or one row group's worth of rows (Parquet, whose compression makes the size an
estimate from the original's bytes per row).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.bench.pipeline import Source
from engine.errors import HeadraceError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_EXTENSIONS = {"read_csv": "csv", "read_jsonl": "jsonl", "read_text": "txt", "read_parquet": "parquet"}


class InputError(HeadraceError):
    """An input of the asked size cannot be built from the pipeline's source."""

    code = "bench_input"
    exit_code = 1


@dataclass(frozen=True)
class BuiltInput:
    """A scratch input built for one source node."""

    node: str
    path: str
    bytes: int
    rows: int
    copies: float
    """How many times the source's rows went in (below 1: a sample of them)."""

    def as_dict(self) -> dict[str, object]:
        """JSON values."""
        return {
            "node": self.node,
            "path": self.path,
            "bytes": self.bytes,
            "rows": self.rows,
            "copies": round(self.copies, 3),
        }


def parse_size(text: str) -> int:
    """``1GB``, ``200MB``, ``64KiB``, ``1.5GB`` or a byte count, as bytes (decimal and binary units)."""
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give a number and a unit, e.g. 1GB, 200MB, 64KiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: the size must be above zero")
    return size


def build_inputs(sources: Sequence[Source], size: int, folder: str) -> list[BuiltInput]:
    """One scratch file per source under ``folder``, each about ``size / len(sources)`` bytes."""
    if not sources:
        raise InputError("--input-size: the pipeline has no source node to build an input from")
    os.makedirs(folder, exist_ok=True)
    share = max(1, size // len(sources))
    return [build_input(source, share, folder) for source in sources]


def build_input(source: Source, size: int, folder: str) -> BuiltInput:
    """Build ``source``'s rows into a file of about ``size`` bytes under ``folder``."""
    files = [f for f in source.files if os.path.isfile(f)]
    if not files:
        raise InputError(
            f"node '{source.node}': --input-size builds from the source's local files, and it names none "
            "(a remote URL, or nothing matches); give a local file with --set nodes."
            f"{source.node}.path=FILE"
        )
    ext = _EXTENSIONS.get(source.op)
    if ext is None:
        raise InputError(
            f"node '{source.node}': --input-size builds {', '.join(sorted(_EXTENSIONS))} inputs, "
            f"not {source.op}"
        )
    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, f"{source.node}.{ext}")
    if ext == "parquet":
        rows, copies = _build_parquet(files, size, dest)
    else:
        header, records = _records(files, source)
        rows, copies = _write_records(header, records, size, dest, source.node)
    return BuiltInput(source.node, dest, os.path.getsize(dest), rows, copies)


def _records(files: Sequence[str], source: Source) -> tuple[bytes, list[bytes]]:
    """The header (CSV only; from the first file) and every record, each ending in a newline."""
    op = source.op
    quoting = {"quotechar": source.quote_char} if source.quote_char else {"quoting": csv.QUOTE_NONE}
    dialect = {"delimiter": source.delimiter, **quoting}
    header = b""
    records: list[bytes] = []
    for number, name in enumerate(files):
        with open(name, "rb") as fh:
            data = fh.read()
        if op != "read_csv":
            records += [line + b"\n" for line in data.splitlines() if line.strip()]
            continue
        text = data.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline=""), **dialect))  # type: ignore[arg-type]
        if not rows:
            continue
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n", **dialect)  # type: ignore[arg-type]
        first, body = (rows[0], rows[1:]) if source.header else (None, rows)
        if number == 0 and first is not None:
            writer.writerow(first)
            header = out.getvalue().encode("utf-8")
        for row in body:
            out.seek(0)
            out.truncate()
            writer.writerow(row)
            records.append(out.getvalue().encode("utf-8"))
    return header, records


def _write_records(header: bytes, records: list[bytes], size: int, dest: str, node: str) -> tuple[int, float]:
    if not records:
        raise InputError(f"node '{node}': the source has no rows to repeat")
    body = b"".join(records)
    written = rows = 0
    with open(dest, "wb") as fh:
        fh.write(header)
        written = len(header)
        while written + len(body) <= size:
            fh.write(body)
            written += len(body)
            rows += len(records)
        for record in records:  # the rest, record by record, at least one
            if written >= size and rows > 0:
                break
            fh.write(record)
            written += len(record)
            rows += 1
    return rows, rows / len(records)


def _build_parquet(files: Sequence[str], size: int, dest: str) -> tuple[int, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f) for f in files])
    if table.num_rows == 0:
        raise InputError(f"{files[0]}: the source has no rows to repeat")
    per_row = max(1.0, sum(os.path.getsize(f) for f in files) / table.num_rows)
    wanted = max(1, int(size / per_row))
    written = 0
    with pq.ParquetWriter(dest, table.schema) as writer:
        while written < wanted:
            part = table.slice(0, min(table.num_rows, wanted - written))
            writer.write_table(part)
            written += part.num_rows
    return written, written / table.num_rows
