"""Byte-range splits of big text files, so several workers can read one CSV / JSONL / text file.

A file is cut into ranges by pure arithmetic on its size (`plan_ranges`). A range owns every record
that *starts* inside it: its reader skips forward to the first record boundary at or after its start
and reads past its end to finish the last record it owns. Neighbouring ranges agree on the boundary
between them because both compute "the first boundary at or after this offset", so every record is
read exactly once whatever the cut points.

For JSONL and text a boundary is the byte after a newline. For CSV a newline inside a quoted field
is not a boundary, so a reader must know whether its start lies inside quotes. The quote state
follows pyarrow's parser, which is laxer than RFC 4180: a quote opens a quoted field only at the
start of a field; inside one, a doubled quote is a literal quote and any other quote closes it;
after the closing quote, and anywhere in an unquoted field, quotes are literal (`5" screen`). So
quotes are taken in runs of consecutive quote bytes. A run of even length never changes the state.
A run of odd length right after a field start (a delimiter, CR, LF or the start of the file) flips
it: it opens a field, or closes one whose text ended with a delimiter or newline. A run of odd length
anywhere else leaves the state *outside* quotes whatever it was: it closes a quoted field, or is
literal text in an unquoted one. Those runs are the key to splitting cheaply: after the last such
run before an offset, the state there follows from the bytes in between alone. Every closing quote
of a field whose text ends in an ordinary character is one, so in a CSV with quoted fields the
state at a range's start is found from the few KiB before it (`csv_local_quote_state`). When it
cannot be (a file without quotes, or a quoted field longer than the look-back), every range of the
file is scanned for its effect on the state (`csv_quote_effect`, in parallel) and the effects are
composed in order (`range_quote_states`). The state at a range's end is the next range's start
state: given it, a reader finds the end of its last record without scanning its own range again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = [
    "ByteRange",
    "QuoteEffect",
    "csv_local_quote_state",
    "csv_quote_effect",
    "header_line",
    "plan_ranges",
    "range_quote_states",
    "read_csv_range",
    "read_lines_range",
    "read_range_bytes",
]

# Read granularity: large enough that per-call overhead (and remote round trips) vanish, small
# enough that the boundary searches, which may run past a range, never pull in much extra.
_CHUNK_BYTES = 4 * 1024 * 1024
# Boundary searches usually end within one record, so they start with small reads and double.
_SEARCH_BYTES = 64 * 1024
# Quote-run scans take this many bytes at a time: their index arrays (8 bytes per run) stay small.
_SCAN_BYTES = 1024 * 1024
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


QuoteEffect = int
"""What a stretch of CSV does to the quote state: :data:`KEEP` it, :data:`FLIP` it, or leave it
:data:`SET_OUT` (outside quotes) or :data:`SET_IN` whatever it was."""
KEEP, FLIP, SET_OUT, SET_IN = 0, 1, 2, 3

LOOK_BACK_BYTES = 256 * 1024
"""How far before a range's start `csv_local_quote_state` looks for a run that fixes the state."""


def apply_effect(effect: QuoteEffect, inside: bool) -> bool:
    """The quote state after a stretch with ``effect``, entered with state ``inside``."""
    return bool(effect & 1) if effect >= SET_OUT else inside ^ bool(effect)


def then(first: QuoteEffect, second: QuoteEffect) -> QuoteEffect:
    """The effect of a stretch with effect ``first`` followed by one with effect ``second``."""
    if second >= SET_OUT:
        return second
    return first ^ second  # KEEP/FLIP flip the state or the value set: both are the low bit


def csv_quote_effect(
    fs: fsspec.AbstractFileSystem, r: ByteRange, quote_char: str = '"', delimiter: str = ","
) -> QuoteEffect:
    """The effect on the quote state of the quote runs that start in [r.start, r.end).

    A run that starts before r.start belongs to the range before; one that starts before r.end and
    goes on past it belongs to this range (the read goes on to its end). Independent per range, so
    the runtime can scan every range of a file in parallel and compose them (`range_quote_states`).
    Reads the range once, through one reused buffer, a vectorised pass per chunk.
    """
    quote = _quote_byte(quote_char)
    scan = _RunScan(quote[0], delimiter.encode("utf-8")[0])
    remaining = r.end - r.start
    with fs.open(r.path, "rb") as f, memoryview(bytearray(min(_CHUNK_BYTES, max(remaining, 1)))) as view:
        if r.start > 0:
            f.seek(r.start - 1)
            scan.prev = f.read(1)[0]
            if scan.prev == scan.quote:
                scan.skipping = True  # the range opens inside a run the range before owns
        else:
            f.seek(0)
        while remaining > 0:
            n = f.readinto(view[: min(len(view), remaining)])
            if not n:
                break
            values = np.frombuffer(view, np.uint8, n)
            for at in range(0, n, _SCAN_BYTES):
                scan.feed(values[at : at + _SCAN_BYTES])
            remaining -= n
        scan.finish_from(f)  # a run still open at r.end goes on into the next range's bytes
    return scan.effect


def csv_local_quote_state(
    fs: fsspec.AbstractFileSystem,
    path: str,
    offset: int,
    quote_char: str = '"',
    delimiter: str = ",",
    look_back: int | None = None,
) -> bool | None:
    """The quote state at ``offset`` of a CSV file, found from the bytes just before it, or None.

    Known when the ``look_back`` bytes (default :data:`LOOK_BACK_BYTES`) before ``offset`` hold a
    run that leaves the state outside
    quotes whatever it was (see the module's notes), or reach the start of the file. A run that
    starts before ``offset`` and goes on past it counts whole, as `csv_quote_effect` counts it.
    """
    quote = _quote_byte(quote_char)
    if offset <= 0:
        return False
    begin = max(0, offset - (LOOK_BACK_BYTES if look_back is None else look_back))
    scan = _RunScan(quote[0], delimiter.encode("utf-8")[0])
    with fs.open(path, "rb") as f:
        if begin > 0:
            f.seek(begin - 1)
            window = f.read(offset - begin + 1)
            scan.prev = window[0]
            window = window[1:]
            if scan.prev == scan.quote:
                scan.skipping = True  # its run started before the window: its length is unknown
        else:
            window = f.read(offset)
        scan.feed(np.frombuffer(window, np.uint8))
        scan.finish_from(f)
    if begin == 0:
        return apply_effect(scan.effect, False)
    return apply_effect(scan.effect, False) if scan.effect >= SET_OUT else None


def range_quote_states(effects: Sequence[QuoteEffect]) -> list[bool]:
    """Quote state at the start of each range of one file, from the ranges' `csv_quote_effect`."""
    states: list[bool] = []
    inside = False
    for effect in effects:
        states.append(inside)
        inside = apply_effect(effect, inside)
    return states


class _RunScan:
    """Folds the quote runs of consecutive chunks of CSV bytes into their effect on the state."""

    def __init__(self, quote: int, delimiter: int) -> None:
        self.quote = quote
        self.field_start = np.array(sorted({delimiter, ord("\r"), ord("\n")}), np.uint8)
        self.effect: QuoteEffect = KEEP
        self.prev = -1
        """The byte before the next chunk (-1: the start of the file, a field start)."""
        self.open_run: tuple[bool, int] | None = None
        """A run reaching the end of the last chunk: whether a field start precedes it, its length."""
        self.skipping = False
        """Leading quotes belong to a run that started before the scan: skip them."""

    def _starts_field(self, byte: int) -> bool:
        return byte < 0 or bool(np.isin(byte, self.field_start))

    def feed(self, values: np.ndarray) -> None:
        """Take the next bytes."""
        if not len(values):
            return
        quotes = values == self.quote
        lead = len(values) if quotes.all() else int(np.argmin(quotes))
        if lead and (self.skipping or self.open_run is not None):
            if self.open_run is not None:
                self.open_run = (self.open_run[0], self.open_run[1] + lead)
            if lead == len(values):
                self.prev = self.quote
                return
            values, quotes = values[lead:], quotes[lead:]
        self.skipping = False
        if self.open_run is not None:
            self._close(*self.open_run)
            self.open_run = None
        # each run is [start, end): where the bytes turn into quotes, and where they turn back
        turns = np.flatnonzero(quotes[1:] != quotes[:-1]) + 1
        starts, ends = turns[quotes[turns]], turns[~quotes[turns]]
        if quotes[0]:
            starts = np.concatenate(([0], starts))
        if quotes[-1]:
            ends = np.concatenate((ends, [len(values)]))
        if len(starts) and ends[-1] == len(values):
            before = values[starts[-1] - 1] if starts[-1] else self.prev
            self.open_run = (self._starts_field(int(before)), int(ends[-1] - starts[-1]))
            starts, ends = starts[:-1], ends[:-1]
        if len(starts):
            before = values[np.maximum(starts - 1, 0)]
            at_field = np.isin(before, self.field_start)
            if starts[0] == 0:
                at_field[0] = self._starts_field(self.prev)
            odd = ((ends - starts) & 1).astype(bool)
            self._fold(odd & at_field, odd & ~at_field)
        self.prev = int(values[-1])

    def finish(self) -> None:
        """The bytes ended (a run still open ends with them)."""
        if self.open_run is not None:
            self._close(*self.open_run)
            self.open_run = None

    def finish_from(self, f: Any) -> bytes:
        """End the scan at `f`'s position: a run still open goes on through the quotes that follow,
        read from `f` (left just after them). Returns those quotes."""
        taken = b""
        while self.open_run is not None and (more := f.read(_SEARCH_BYTES)):
            rest = more.lstrip(bytes([self.quote]))
            run = more[: len(more) - len(rest)]
            self.feed(np.frombuffer(run, np.uint8))
            taken += run
            if rest:
                f.seek(f.tell() - len(rest))
                break
        self.finish()
        return taken

    def _close(self, at_field: bool, length: int) -> None:
        odd = np.array([length & 1 == 1])
        self._fold(odd & at_field, odd & (not at_field))

    def _fold(self, flips: np.ndarray, settles: np.ndarray) -> None:
        settled = np.flatnonzero(settles)
        if len(settled):
            after = int(np.count_nonzero(flips[settled[-1] + 1 :]))
            self.effect = SET_OUT | (after & 1)
        else:
            self.effect = then(self.effect, int(np.count_nonzero(flips)) & 1)


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
    fs: fsspec.AbstractFileSystem, path: str, quote_char: str = '"', delimiter: str = ","
) -> bytes:
    """The first CSV record of the file (several lines if quoted), including its newline."""
    quote = _quote_byte(quote_char)
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


def _quote_byte(quote_char: str) -> bytes:
    quote = quote_char.encode("utf-8")
    if len(quote) != 1 or quote == _NL:
        raise ValueError(f"quote_char must be one byte, not a newline: {quote!r}")
    return quote


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

    Walks quote runs (see the module's notes) with bytes.find, so the cost is in quotes passed, not
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
    quote = _quote_byte(quote_char) if kind == "csv" and quote_char is not None else None
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
            scan = _RunScan(quote[0], delim[0])
            scan.prev = _NL[0] if data_start else -1
            values = np.frombuffer(body.view(len(prefix)), np.uint8)
            for at_byte in range(0, len(values), _SCAN_BYTES):
                scan.feed(values[at_byte : at_byte + _SCAN_BYTES])
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
