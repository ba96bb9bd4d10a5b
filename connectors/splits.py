"""Byte-range splits of big text files, so several workers can read one CSV / JSONL / text file.

A file is cut into ranges by pure arithmetic on its size (`plan_ranges`). A range owns every record
that *starts* inside it: its reader skips forward to the first record boundary at or after its start
and reads past its end to finish the last record it owns. Neighbouring ranges agree on the boundary
between them because both compute "the first boundary at or after this offset", so every record is
read exactly once whatever the cut points.

For JSONL and text a boundary is the byte after a newline. For CSV a newline inside a quoted field
is not a boundary, so a reader must know whether its start lies inside quotes: the quote state, as
pyarrow's parser has it, comes from `connectors.csv_quotes` (found from the bytes just before the
range, or by composing every range's effect). The state at a range's end is the next range's start
state: given it, a reader finds the end of its last record without scanning its own range again.
The boundary searches here walk quote runs by the same rule, a record at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from connectors.csv_quotes import RunScan, apply_effect, quote_byte

__all__ = [
    "ByteRange",
    "header_line",
    "plan_ranges",
    "read_csv_range",
    "read_lines_range",
    "read_range_bytes",
]

# Read granularity: large enough that per-call overhead (and remote round trips) vanish, small
# enough that the boundary searches, which may run past a range, never pull in much extra.
_CHUNK_BYTES = 4 * 1024 * 1024
# Boundary searches usually end within one record, so they start with small reads and double.
_SEARCH_BYTES = 64 * 1024
_NL = b"\n"
_NON_BLANK = re.compile(rb"[^\r\n]")


@dataclass(frozen=True)
class ByteRange:
    """A split of one file: it owns every record that STARTS at a byte offset in [start, end)."""

    path: str
    start: int
    end: int
    file_size: int
    index: int


def plan_ranges(fs: fsspec.AbstractFileSystem, path: str, target_bytes: int) -> list[ByteRange]:
    """Cut the file into ranges of about `target_bytes` (at least one range, even when empty).

    Pure arithmetic on the file size: the file is not read. Sizes are spread evenly so the last
    range is not a small remainder.
    """
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be at least 1, got {target_bytes}")
    size = int(fs.size(path))
    count = max(1, -(-size // target_bytes))
    cuts = [size * i // count for i in range(count + 1)]
    return [ByteRange(path, cuts[i], cuts[i + 1], size, i) for i in range(count)]


def read_range_bytes(
    fs: fsspec.AbstractFileSystem,
    r: ByteRange,
    *,
    kind: Literal["csv", "lines"],
    in_quotes: bool = False,
    end_in_quotes: bool | None = None,
    quote_char: str = '"',
    skip_header: bool = False,
    delimiter: str = ",",
) -> tuple[bytes, int]:
    """Return (data, data_start_offset): the bytes of every record that starts in [r.start, r.end).

    Data runs from the first record boundary at or after r.start up to and including the end of
    the record holding byte r.end - 1, reading past r.end as far as that record goes. For "lines"
    a boundary is the byte after a newline; for "csv" after a newline outside quotes, `in_quotes`
    being the quote state at r.start and `end_in_quotes` the one at r.end (the next range's
    `in_quotes`; None: scan the range's own bytes for it). With `skip_header` the first range
    leaves out the file's first record. A range that owns no record returns empty data.
    """
    data, data_start = _read_records(
        fs, r, kind, in_quotes, quote_char, skip_header, end_in_quotes=end_in_quotes, delimiter=delimiter
    )
    return (data.to_pybytes() if data is not None else b""), data_start


def header_line(
    fs: fsspec.AbstractFileSystem, path: str, quote_char: str | None = '"', delimiter: str = ","
) -> bytes:
    """The first CSV record of the file (several lines if quoted), including its newline.

    ``quote_char`` None: the file has no quoting, and the first line is the record."""
    quote = quote_byte(quote_char) if quote_char is not None else None
    parts: list[bytes] = []
    at, step = _Cursor(), _SEARCH_BYTES
    with fs.open(path, "rb") as f:
        while chunk := _read_whole_runs(f, min(step, _CHUNK_BYTES), quote):
            step *= 2
            hit = _find_boundary(chunk, 0, at, quote, delimiter.encode("utf-8"))
            if hit >= 0:
                parts.append(chunk[:hit])
                break
            parts.append(chunk)
    return b"".join(parts)


def read_csv_range(
    fs: fsspec.AbstractFileSystem,
    r: ByteRange,
    *,
    in_quotes: bool,
    header: bytes | None,
    read_options: pacsv.ReadOptions | None,
    parse_options: pacsv.ParseOptions | None,
    convert_options: pacsv.ConvertOptions | None,
    batch_rows: int,
    end_in_quotes: bool | None = None,
) -> Iterator[pa.RecordBatch]:
    """Parse the range's records with pyarrow.csv, in batches of exactly `batch_rows` but the last.

    `in_quotes` and `end_in_quotes` are the quote states at r.start and r.end (see
    `read_range_bytes`; None counts the latter from the range's bytes).
    `header` is the file's header line (from `header_line`), prepended to every range so each parse
    sees the column names; the first range then skips the file's own copy. Pass None for a file
    without a header, with the names in `read_options.column_names`. `read_options.skip_rows`
    would apply to every range, so it must be left at 0. Types left to inference are inferred per
    range: give `convert_options.column_types` when ranges must agree on a schema.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    parse_options = parse_options or pacsv.ParseOptions()
    # The quote scan must follow the parser's quoting: quote_char=False disables quoting.
    quote = parse_options.quote_char if parse_options.quote_char else None
    skip_header = header is not None and r.start == 0
    # A header-only file may lack its final newline; the data must still start on a new line.
    prefix = b"" if header is None else header if header.endswith(_NL) else header + _NL
    data, _ = _read_records(
        fs, r, "csv", in_quotes, quote, skip_header, prefix, end_in_quotes, parse_options.delimiter
    )
    # A range of only blank lines has no rows, and pyarrow cannot parse it without a header.
    if data is None or _NON_BLANK.search(data, len(prefix)) is None:
        return
    # One parser block for the whole range: pyarrow (26) drops the "\n" of a quoted "\r\n" that
    # straddles two of its blocks, so a range must never be cut into blocks. Memory stays bounded by
    # the range size, which the range already holds.
    whole = _one_block(read_options, data.size)
    # The parser reads the Arrow buffer in place, without a Python file.
    reader = pacsv.open_csv(
        pa.BufferReader(data),
        read_options=whole,
        parse_options=parse_options,
        convert_options=convert_options,
    )
    yield from _rebatch(reader, batch_rows)


def _one_block(options: pacsv.ReadOptions | None, size: int) -> pacsv.ReadOptions:
    base = options or pacsv.ReadOptions()
    return pacsv.ReadOptions(
        use_threads=base.use_threads,
        block_size=max(size + 1, 1 << 16),
        skip_rows=base.skip_rows,
        skip_rows_after_names=base.skip_rows_after_names,
        column_names=base.column_names,
        autogenerate_column_names=base.autogenerate_column_names,
        encoding=base.encoding,
    )


def read_lines_range(
    fs: fsspec.AbstractFileSystem, r: ByteRange, *, batch_rows: int, encoding: str = "utf-8"
) -> Iterator[list[str]]:
    """The lines (without "\\n" or "\\r\\n") of the records the range owns, in lists of at most
    `batch_rows`. A last line without a trailing newline is included.

    The encoding must keep b"\\n" a single byte that no other character contains (UTF-8, ASCII,
    Latin-1...); UTF-16/32 files are not supported.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    data, _ = _read_records(fs, r, "lines", False, None, False)
    if data is None:
        return
    # Split on "\n" only: str.splitlines also splits on \u2028, \x85... which JSON may hold raw.
    lines = str(data, encoding).split("\n")
    if data.slice(data.size - 1).to_pybytes() == _NL:
        lines.pop()  # the empty piece after the final newline is not a line
    for i in range(0, len(lines), batch_rows):
        yield [line[:-1] if line.endswith("\r") else line for line in lines[i : i + batch_rows]]


@dataclass
class _Cursor:
    """Where a boundary search stands: the quote state and the byte before the next chunk."""

    inside: bool = False
    prev: int = -1
    """The byte before the next chunk (-1: the start of the file, a field start)."""
    skip_quotes: bool = False
    """The next chunk opens with the rest of a quote run already counted in ``inside``."""


def _find_boundary(
    buf: bytes | bytearray, pos: int, at: _Cursor, quote: bytes | None, delimiter: bytes = b","
) -> int:
    """Index just after the first newline at or after `pos` outside quotes, or -1 if none.

    Walks quote runs (see connectors.csv_quotes) with bytes.find, so the cost is in quotes passed, not
    bytes; it only ever runs over about a record. Updates `at` to the state at the end of the scan
    (where the boundary was found, or at the end of `buf`) so a scan can continue into the next
    chunk; `buf` must not end inside a quote run unless the file ends there (`_read_whole_runs`).
    """
    if quote is None:
        hit = buf.find(_NL, pos)
        at.prev = buf[-1] if buf else at.prev
        return hit + 1 if hit >= 0 else -1
    q_byte = quote[0]
    if at.skip_quotes:
        while pos < len(buf) and buf[pos] == q_byte:
            pos += 1
        at.skip_quotes = pos == len(buf)
    newline = -1
    while True:
        if at.inside:
            q = buf.find(quote, pos)
        else:
            if newline < pos:  # a newline still ahead of pos stays the first one: skip re-finding
                newline = buf.find(_NL, pos)
            q = buf.find(quote, pos, newline if newline >= 0 else len(buf))
            if q < 0 and newline >= 0:
                at.prev = _NL[0]
                return newline + 1
        if q < 0:
            if buf:
                at.prev = buf[-1]
            return -1
        end = q + 1
        while end < len(buf) and buf[end] == q_byte:
            end += 1
        before = buf[q - 1] if q > 0 else at.prev
        if (end - q) & 1:
            field_start = before < 0 or before in (delimiter[0], 13, 10)
            at.inside = (not at.inside) if field_start else False
        pos = end
        at.prev = q_byte
        if pos >= len(buf):
            return -1


def _read_whole_runs(f: Any, size: int, quote: bytes | None) -> bytes:
    """Up to `size` bytes from `f`, read on past the end while they end inside a run of quotes."""
    chunk = f.read(size)
    if quote is None:
        return chunk
    while chunk.endswith(quote) and (more := f.read(_SEARCH_BYTES)):
        chunk += more
    return chunk


def _read_records(
    fs: fsspec.AbstractFileSystem,
    r: ByteRange,
    kind: Literal["csv", "lines"],
    in_quotes: bool,
    quote_char: str | None,
    skip_header: bool,
    prefix: bytes = b"",
    end_in_quotes: bool | None = None,
    delimiter: str = ",",
) -> tuple[pa.Buffer | None, int]:
    """`prefix` followed by the records the range owns, and the offset where they start.

    None when the range owns no record. The body is read straight into one Arrow buffer, chunk by
    chunk, so a range costs one copy from the file and the parser can use it in place; the buffer
    comes from Arrow's memory pool, which reuses the pages of the task before (a zero-filled
    bytearray faulted in fresh pages for every range: 0.6 CPU-s per GB read).
    """
    quote = quote_byte(quote_char) if kind == "csv" and quote_char is not None else None
    inside = in_quotes and quote is not None
    delim = delimiter.encode("utf-8")
    with fs.open(r.path, "rb") as f:
        if r.start == 0:
            data_start = 0
            if skip_header:
                # The header may be longer than the range: search to the end of the file.
                data_start = _seek_boundary(f, 0, r.file_size, _Cursor(), quote, delim)
                if data_start < 0:
                    return None, r.file_size  # the file is all header
        else:
            f.seek(r.start - 1)
            before = f.read(1)
            # A newline is not a quote, so the state at r.start also holds just before it.
            if before == _NL and not inside:
                data_start = r.start
            else:
                # A boundary at r.end or later starts a record owned by the next range: stop there.
                # A quote run going on across r.start was counted whole in the range before.
                at = _Cursor(inside, before[0], skip_quotes=quote is not None and before == quote)
                data_start = _seek_boundary(f, r.start, r.end - 1, at, quote, delim)
                if data_start < 0:
                    return None, r.end
        if data_start >= r.end:
            return None, data_start

        # Body: the owned records up to r.end, then finish the record holding byte r.end - 1.
        body = _RangeBuffer(len(prefix) + r.end - data_start + _SEARCH_BYTES)
        body.append(prefix)
        f.seek(data_start)
        body.read_from(f, r.end - data_start)
        if body.size == len(prefix):
            return None, data_start
        if body.size < len(prefix) + r.end - data_start:
            end_in_quotes = None  # the file shrank since it was planned: scan what is there
        # A quote run going on across r.end counts whole in this range: the search after r.end skips
        # the rest of it, or reads it into the body when it scans the body itself.
        at = _Cursor(prev=body.last_byte()[0], skip_quotes=quote is not None and body.last_byte() == quote)
        if quote is None or (end_in_quotes is None and r.end >= r.file_size):
            end_in_quotes = False  # no quoting, or nothing follows the range
        elif end_in_quotes is None:
            # data_start is a boundary, so outside quotes at a field start; the runs after it give
            # the state at r.end.
            scan = RunScan(quote, delimiter)
            scan.prev = _NL[0] if data_start else -1
            scan.feed(np.frombuffer(body.view(len(prefix)), np.uint8))
            body.append(scan.finish_from(f))  # the rest of a run going on past r.end
            end_in_quotes = apply_effect(scan.effect, False)
            at.skip_quotes = False
        at.inside = end_in_quotes
        # A newline is not a quote, so when the last byte is one the state before it is the state at
        # r.end too: outside quotes it ends the range's last record.
        if not (body.last_byte() == _NL and not end_in_quotes):
            step = _SEARCH_BYTES
            while chunk := _read_whole_runs(f, min(step, _CHUNK_BYTES), quote):
                step *= 2
                hit = _find_boundary(chunk, 0, at, quote, delim)
                body.append(chunk if hit < 0 else memoryview(chunk)[:hit])
                if hit >= 0:
                    break
            # no boundary before the end of the file: the last record has no final newline
    return body.buffer(), data_start


class _RangeBuffer:
    """An Arrow buffer filled from the front, growing (by a copy) only past its initial capacity."""

    def __init__(self, capacity: int) -> None:
        self._buf = pa.allocate_buffer(capacity)
        self.size = 0

    def view(self, start: int = 0) -> memoryview:
        """The filled bytes from `start`, writable."""
        return memoryview(self._buf).cast("B")[start : self.size]

    def append(self, data: bytes | memoryview) -> None:
        """Copy `data` after the filled bytes."""
        self._reserve(self.size + len(data))
        with memoryview(self._buf).cast("B") as view:
            view[self.size : self.size + len(data)] = data
        self.size += len(data)

    def read_from(self, f: Any, nbytes: int) -> None:
        """Read up to `nbytes` from `f` after the filled bytes (fewer at the end of the file)."""
        self._reserve(self.size + nbytes)
        end = self.size + nbytes
        with memoryview(self._buf).cast("B") as view:
            while self.size < end:
                n = f.readinto(view[self.size : min(end, self.size + _CHUNK_BYTES)])
                if not n:
                    break
                self.size += n

    def last_byte(self) -> bytes:
        """The last filled byte (empty when nothing is filled)."""
        return self._buf.slice(self.size - 1, 1).to_pybytes() if self.size else b""

    def buffer(self) -> pa.Buffer:
        """The filled bytes, without a copy."""
        return self._buf.slice(0, self.size)

    def _reserve(self, capacity: int) -> None:
        if capacity > self._buf.size:
            # a record longer than the slack (rare): grow by a quarter, not double a range-sized buffer
            grown = pa.allocate_buffer(max(capacity, self._buf.size + self._buf.size // 4))
            with memoryview(grown).cast("B") as new, memoryview(self._buf).cast("B") as old:
                new[: self.size] = old[: self.size]
            self._buf = grown


def _seek_boundary(f: Any, start: int, limit: int, at: _Cursor, quote: bytes | None, delimiter: bytes) -> int:
    """Offset just after the first boundary newline in [start, limit), or -1 if there is none.

    Reads from `start` in chunks; `at` is the search's state at `start`.
    """
    f.seek(start)
    pos, step = start, _SEARCH_BYTES
    while pos < limit:
        chunk = _read_whole_runs(f, min(step, _CHUNK_BYTES, limit - pos), quote)
        step *= 2
        if not chunk:
            break
        hit = _find_boundary(chunk, 0, at, quote, delimiter)
        if hit >= 0:
            return pos + hit if pos + hit - 1 < limit else -1
        pos += len(chunk)
    return -1


def _rebatch(reader: pacsv.CSVStreamingReader, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Re-cut the parser's block-sized batches into batches of exactly `batch_rows` but the last."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows < batch_rows:
            continue
        table = pa.Table.from_batches(pending)
        full = pending_rows - pending_rows % batch_rows
        for offset in range(0, full, batch_rows):
            yield from table.slice(offset, batch_rows).combine_chunks().to_batches()
        pending = table.slice(full).to_batches()
        pending_rows -= full
    if pending_rows:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()
