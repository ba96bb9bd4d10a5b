"""Reading a source's sample spread over the whole input, and counting (or estimating) its rows, in this
process and without Ray.

A file's first rows are often not the file: logs and exports sorted by time grow, shrink or change kind
along their length. So the sample is read from ``sample_ranges`` places spread evenly over the input,
chosen by arithmetic alone (the same input gives the same sample):

- line and CSV files (CSV, JSONL, text lines): the input's data bytes (every file of a folder end to
  end, headers left out) are cut into K equal strata, and a window centred in each is read, growing
  until it holds its share of ``sample_rows`` (or reaches its stratum, or ``_MAX_WINDOW_BYTES``). A
  window is a byte range read by the source's own reader, with the record-boundary logic of splits
  (``connectors.splits``): it holds the records that *start* in it, and a CSV window starts with the
  quote state of that offset (``connectors.csv_quotes``). Each window's rows stand for
  stratum bytes / window bytes rows; the row count is the sum over strata, with a p5-p95 range from
  the differences between neighbouring strata (``intervals``). When every window reached its whole
  stratum, the whole input was read and the count is exact.
- Parquet: the row count is exact (metadata); the sample is the first rows of K row groups spread over
  the files' rows, each standing for its stratum's share of rows.
- text files read whole (``mode: file``): one row per file, exact; the sample is K files spread evenly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.csv_quotes import apply_effect, csv_local_quote_state, csv_quote_effect
from connectors.files import filesystem
from connectors.readers import Reader, Split, reader_for
from connectors.sources import FileSource, ReadCsv, ReadParquet, ReadText
from connectors.splits import ByteRange
from engine.estimate.intervals import grouped_se, p5_p95
from engine.estimate.results import SampleRange, SourceEstimate
from engine.plan import PlanNode

_FIRST_WINDOW_BYTES = 2 * 1024
"""A window's first size; it grows (about to the size its rows say it needs) until it holds its share."""
_MAX_WINDOW_BYTES = 512 * 1024
"""No window grows past this: with K = 16 a sample reads at most 8 MiB, however long the rows."""
_LOOK_BACKS = (4 * 1024, 64 * 1024, 256 * 1024)
"""How far before a CSV window the quote state is looked for: a record's closing quote fixes it, so
usually within the first, shortest look-back."""
_EXACT_STATE_BYTES = 8 * 1024 * 1024
"""A CSV window whose quote state the look-back cannot fix starts this far into its file at most for
the state to be scanned from the file's start; further on it is taken as outside quotes (and said)."""
_WHOLE_FILE = 1 << 62
"""Split size that makes one split per file: planning then reads nothing but headers and the schema."""


@dataclass(frozen=True)
class Part:
    """The rows read from one place of a source; each stands for ``weight`` rows of the whole input."""

    table: pa.Table
    weight: float
    group: int = 0
    """Parts of one group (a file cut into its own strata) are compared with each other only."""


@dataclass(frozen=True)
class Sample:
    """A source's sample, one part per stratum in input order, and what it says about the whole."""

    parts: tuple[Part, ...]
    source: SourceEstimate

    @property
    def whole(self) -> bool:
        """The sample holds every row of the source."""
        return self.source.basis == "exact" and self.source.sampled_rows == self.source.rows


BadRow = Callable[[str, dict[str, Any]], None]


def sample_source(node: PlanNode, urls: list[str], want: int, ranges: int) -> Sample:
    """About ``want`` rows of a source spread over ``ranges`` places of it, and its row count."""
    spec: FileSource = node.spec  # type: ignore[assignment]
    reader = reader_for(spec)
    splits = reader.splits(spec.model_copy(update={"split_bytes": _WHOLE_FILE}), node.id, urls)
    malformed = [0]

    def bad_row(error: str, row: dict[str, Any]) -> None:
        malformed[0] += 1

    k = max(1, min(ranges, want))
    if isinstance(spec, ReadParquet):
        return _parquet(node.id, spec, reader, splits, want, k, bad_row)
    if isinstance(spec, ReadText) and spec.mode == "file":
        return _files(node.id, spec, reader, splits, k, bad_row)
    return _ByteWindows(node.id, spec, reader, splits, want, k, bad_row, malformed).sample()


# ---------------------------------------------------------------- line and CSV files


@dataclass(frozen=True)
class _File:
    split: Split
    data_start: int
    """Where the file's records begin: after its header, if any."""
    offset: int
    """Where its data begins in the input's data bytes, every file end to end."""

    @property
    def data_bytes(self) -> int:
        return max(self.split.end - self.data_start, 0)


class _ByteWindows:
    """The spread sample of line and CSV files: one growing window per stratum of the data bytes."""

    def __init__(
        self,
        node: str,
        spec: FileSource,
        reader: Reader,
        splits: list[Split],
        want: int,
        k: int,
        bad_row: BadRow,
        malformed: list[int],
    ) -> None:
        self.node, self.spec, self.reader, self.bad_row, self.malformed = (
            node,
            spec,
            reader,
            bad_row,
            malformed,
        )
        self.files: list[_File] = []
        offset = 0
        for split in splits:
            start = min(len(split.header or b""), split.end)
            self.files.append(_File(split, start, offset))
            offset += max(split.end - start, 0)
        self.total = offset
        self.k = k
        self.share = math.ceil(want / k)
        self.bytes_read = 0
        self.first_width = _FIRST_WINDOW_BYTES
        """Where a window starts growing: the width the window before needed for its share."""
        self.assumed_outside = 0
        """CSV windows whose quote state could not be found and was taken as outside quotes."""

    def sample(self) -> Sample:
        size = sum(f.split.end for f in self.files)
        if self.total == 0:
            source = SourceEstimate(self.node, 0, "exact", "the input holds no data", 0, size, 0, 0, 0)
            return Sample((), source)
        parts: list[Part] = []
        places: list[SampleRange] = []
        totals: list[float] = []
        whole = True
        for lo, hi, inside, group in self._strata():
            table, read, pieces = self._window(lo, hi, inside)
            whole = whole and read == (lo, hi)
            weight = (hi - lo) / (read[1] - read[0])
            parts.append(Part(table, weight, group))
            places.extend(pieces)
            totals.append(table.num_rows * weight)
        sampled = sum(p.table.num_rows for p in parts)
        if whole:
            parts = [Part(p.table, 1.0, p.group) for p in parts]
            how = "the whole input was read"
            source = SourceEstimate(
                self.node, sampled, "exact", how, sampled, size, self.malformed[0], sampled, sampled,
                self.bytes_read, tuple(places),
            )  # fmt: skip
            return Sample(tuple(parts), source)
        rows = sum(totals)
        se = grouped_se(totals, [p.group for p in parts])
        low, high = p5_p95(rows, se) if se is not None else (sampled, 2 * rows)  # one range: no spread
        files = len({p.url for p in places})
        how = (
            f"{sampled:,} rows in {len(places)} byte ranges of {files} of {len(self.files)} file(s) spread "
            f"evenly ({_size(self.bytes_read)} read of {_size(self.total)}), each scaled by its share "
            f"of the bytes; p5-p95 {round(low):,}-{round(high):,}"
        )
        if self.assumed_outside:
            how += (
                f"; {self.assumed_outside} range(s) taken as starting outside quotes (no quote that "
                f"settles it in the {_size(_LOOK_BACKS[-1])} before)"
            )
        source = SourceEstimate(
            self.node, round(rows), "estimated", how, sampled, size, self.malformed[0],
            max(sampled, round(low)), round(high), self.bytes_read, tuple(places),
        )  # fmt: skip
        return Sample(tuple(parts), source)

    def _strata(self) -> list[tuple[int, int, tuple[int, int], int]]:
        """K strata of the data bytes, in order, each with the bytes its window may take (one file's).

        With no more files than K, each file gets strata in proportion to its bytes (at least one), so
        no stratum mixes files whose rows differ; with more, the K equal strata of all the bytes end to
        end, each read in the file holding its middle.
        """
        files = [f for f in self.files if f.data_bytes]
        out: list[tuple[int, int, tuple[int, int], int]] = []
        if len(files) <= self.k:
            shares = _shares([f.data_bytes for f in files], self.k)
            for group, (f, n) in enumerate(zip(files, shares, strict=True)):
                cuts = [f.offset + f.data_bytes * i // n for i in range(n + 1)]
                out.extend((a, b, (a, b), group) for a, b in itertools.pairwise(cuts) if b > a)
            return out
        for i in range(self.k):
            lo, hi = self.total * i // self.k, self.total * (i + 1) // self.k
            middle = (lo + hi) // 2
            f = next(f for f in files if f.offset + f.data_bytes > middle)
            inside = (max(lo, f.offset), min(hi, f.offset + f.data_bytes))
            if hi > lo:
                out.append((lo, hi, inside, 0))
        return out

    def _window(
        self, lo: int, hi: int, inside: tuple[int, int]
    ) -> tuple[pa.Table, tuple[int, int], list[SampleRange]]:
        """The rows of a window centred in stratum [lo, hi) (within ``inside``), grown until it holds
        its share: its table, the data bytes it spans, and where in which files they are.

        A window grows by reading the bytes next to it (forward, then backward once it meets the end
        of its stratum), never the same bytes twice: adjacent byte ranges own disjoint records."""
        lo, hi = inside
        width = min(self.first_width, hi - lo)
        start = max(lo, min((lo + hi) // 2 - width // 2, hi - width))
        end = start
        tables: list[pa.Table] = []
        pieces: list[SampleRange] = []
        while True:
            if end < hi:
                more, found = self._read(end, min(hi, start + width))
                end = min(hi, start + width)
            else:
                more, found = self._read(max(lo, end - width), start)
                start = max(lo, end - width)
            tables, pieces = tables + more, _joined(pieces + found)
            rows = sum(t.num_rows for t in tables)
            width = end - start
            if rows >= self.share or width >= min(hi - lo, _MAX_WINDOW_BYTES):
                break
            # grow to about the width its rows so far say the share needs, by 2x to 4x
            needed = width * self.share * 5 // (4 * rows) if rows else 4 * width
            width = min(hi - lo, _MAX_WINDOW_BYTES, max(2 * width, min(4 * width, needed)))
        if rows:  # the next window starts at the width these rows say its share needs
            self.first_width = max(
                _FIRST_WINDOW_BYTES, min(_MAX_WINDOW_BYTES, width * self.share * 5 // (4 * rows))
            )
        return _concat(tables), (start, end), pieces

    def _read(self, lo: int, hi: int) -> tuple[list[pa.Table], list[SampleRange]]:
        """The rows whose records start in data bytes [lo, hi), file by file."""
        tables: list[pa.Table] = []
        pieces: list[SampleRange] = []
        for f in self.files:
            a, b = max(lo, f.offset), min(hi, f.offset + f.data_bytes)
            if a >= b:
                continue
            start, end = f.data_start + a - f.offset, f.data_start + b - f.offset
            split = dataclasses.replace(
                f.split, start=start, end=end, in_quotes=self._in_quotes(f, start), end_in_quotes=None
            )
            got = list(self.reader.read(self.spec, split, 1 << 20, self.bad_row))
            tables.extend(got)
            self.bytes_read += end - start
            pieces.append(SampleRange(f.split.url, start, end, sum(t.num_rows for t in got)))
        return tables, pieces

    def _in_quotes(self, f: _File, at: int) -> bool:
        """The CSV quote state at byte ``at`` of ``f``, as splits find it (False for other sources)."""
        spec = self.spec
        if not isinstance(spec, ReadCsv) or spec.quote_char is None or at <= f.data_start:
            return False  # not CSV, no quoting, or just after the header (which ended a record)
        fs, path = filesystem(f.split.url)
        for look_back in _LOOK_BACKS:
            state = csv_local_quote_state(fs, path, at, spec.quote_char, spec.delimiter, look_back)
            self.bytes_read += min(look_back, at)
            if state is not None:
                return state
        if at <= _EXACT_STATE_BYTES:  # near the start: scan from it, as splits do for such a file
            self.bytes_read += at
            head = ByteRange(path, 0, at, f.split.end, 0)
            return apply_effect(csv_quote_effect(fs, head, spec.quote_char, spec.delimiter), False)
        self.assumed_outside += 1
        return False


# ---------------------------------------------------------------- Parquet and whole text files


def _parquet(
    node: str, spec: ReadParquet, reader: Reader, splits: list[Split], want: int, k: int, bad_row: BadRow
) -> Sample:
    """Exact rows from the metadata; the first rows of K row groups spread over the rows, each standing
    for its strata's rows."""
    metadata: dict[str, pq.FileMetaData] = {}
    groups = [(s, _group_rows(s, metadata)) for s in splits]
    total = sum(n for _, n in groups)
    size = sum(s.end - s.start for s in splits)
    if total == 0:
        return Sample((), SourceEstimate(node, 0, "exact", "Parquet metadata", 0, size, 0, 0, 0))
    # the row group holding the middle row of each of K equal strata of rows, and the rows it stands for
    chosen: dict[int, float] = {}
    ends = [0]
    for _, n in groups:
        ends.append(ends[-1] + n)
    for i in range(k):
        middle = total * (2 * i + 1) // (2 * k)
        g = next(j for j in range(len(groups)) if ends[j + 1] > middle)
        chosen[g] = chosen.get(g, 0.0) + total / k
    share = math.ceil(want / len(chosen))
    parts: list[Part] = []
    places: list[SampleRange] = []
    for g, stands_for in sorted(chosen.items()):
        split, rows = groups[g]
        table = _concat(_take(reader, spec, split, min(share, rows), bad_row))
        if table.num_rows:
            parts.append(Part(table, stands_for / table.num_rows))
        places.append(SampleRange(split.url, split.start, split.end, table.num_rows, split.row_group))
    sampled = sum(p.table.num_rows for p in parts)
    if sampled == total:
        parts = [Part(p.table, 1.0) for p in parts]
    how = f"Parquet metadata; {sampled:,} rows sampled from {len(places)} of {len(groups)} row groups"
    bytes_read = sum(p.end - p.start for p in places)
    source = SourceEstimate(
        node, total, "exact", how, sampled, size, 0, total, total, bytes_read, tuple(places)
    )
    return Sample(tuple(parts), source)


def _files(node: str, spec: ReadText, reader: Reader, splits: list[Split], k: int, bad_row: BadRow) -> Sample:
    """One row per file, exact; K files spread evenly over the list, each standing for its stratum."""
    n = len(splits)
    size = sum(s.end for s in splits)
    picks = sorted({n * (2 * i + 1) // (2 * k) for i in range(min(k, n))})
    parts: list[Part] = []
    places: list[SampleRange] = []
    for at in picks:
        table = _concat(list(reader.read(spec, splits[at], 1, bad_row)))
        parts.append(Part(table, n / len(picks)))
        places.append(SampleRange(splits[at].url, 0, splits[at].end, table.num_rows))
    bytes_read = sum(p.end for p in places)
    how = "one row per file" + (
        f"; {len(picks)} of {n} files sampled, spread evenly" if len(picks) < n else ""
    )
    source = SourceEstimate(node, n, "exact", how, len(picks), size, 0, n, n, bytes_read, tuple(places))
    return Sample(tuple(parts), source)


def _joined(pieces: list[SampleRange]) -> list[SampleRange]:
    """``pieces`` with the ranges that meet in one file made one, in file order."""
    out: list[SampleRange] = []
    for piece in sorted(pieces, key=lambda p: (p.url, p.start)):
        last = out[-1] if out else None
        if last is not None and last.url == piece.url and last.end == piece.start:
            out[-1] = dataclasses.replace(last, end=piece.end, rows=last.rows + piece.rows)
        else:
            out.append(piece)
    return out


def _shares(sizes: list[int], k: int) -> list[int]:
    """``k`` strata shared in proportion to ``sizes`` (largest remainders), at least one each."""
    total = sum(sizes)
    exact = [k * size / total for size in sizes]
    counts = [max(1, int(x)) for x in exact]
    for i in sorted(range(len(sizes)), key=lambda i: int(exact[i]) - exact[i]):
        if sum(counts) >= k:
            break
        counts[i] += 1
    return counts


def _take(reader: Reader, spec: FileSource, split: Split, want: int, bad_row: BadRow) -> list[pa.Table]:
    got: list[pa.Table] = []
    rows = 0
    for table in reader.read(spec, split, max(want, 1), bad_row):
        got.append(table.slice(0, want - rows))
        rows += got[-1].num_rows
        if rows >= want:
            break
    return got


def _group_rows(split: Split, metadata: dict[str, pq.FileMetaData]) -> int:
    if split.url not in metadata:
        fs, path = filesystem(split.url)
        with fs.open(path, "rb") as fh:
            metadata[split.url] = pq.ParquetFile(fh).metadata
    meta = metadata[split.url]
    return meta.row_group(split.row_group or 0).num_rows if meta.num_row_groups else 0


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
