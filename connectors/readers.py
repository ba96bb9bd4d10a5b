"""What sources do: plan the splits of their inputs, and read one split as Arrow tables.

Each source op's reader is its ``reader`` behaviour in the op registry (:func:`reader_for`). A split
is the unit of parallelism, retry and resume: one Ray task reads, transforms and writes one split.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.csv_quotes import csv_local_quote_state, csv_quote_effect, range_quote_states
from connectors.files import FileRef, expand, filesystem, is_local
from connectors.sources import ReadCsv, ReadJsonl, ReadParquet, ReadText
from connectors.splits import ByteRange, header_line, plan_ranges, read_csv_range, read_lines_range
from connectors.text_cells import InvalidText, decode_text_columns
from engine.errors import DataError, HeadraceError
from engine.spec.models import SourceSpec
from engine.spec.registry import behaviour

_INFER_BLOCK = 1 << 20  # the bytes Arrow infers column types from: the file's first block


@dataclass(frozen=True)
class Split:
    """A piece of a source's input: a byte range of a file, or a row group of a Parquet file."""

    node: str
    index: int
    url: str
    start: int
    end: int
    row_group: int | None = None
    schema: pa.Schema | None = None
    in_quotes: bool = False
    """CSV: whether ``start`` lies inside a quoted field (a quote run across it counts whole)."""
    end_in_quotes: bool | None = None
    """CSV: whether ``end`` lies inside a quoted field (None: not known, the reader scans)."""
    header: bytes | None = None

    @property
    def id(self) -> str:
        """A stable id of this split, used in manifests and resume."""
        where = f"rg{self.row_group}" if self.row_group is not None else f"{self.start}-{self.end}"
        return f"{self.url}@{where}"


BadRowHandler = Callable[[str, dict[str, Any]], None]
"""Told of each malformed input row (error text, what is known of the row) that a source skipped."""

ParallelMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]
"""Runs ``fn(*args)`` for each argument tuple, possibly in parallel, returning results in order."""


def serial_map(fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """The trivial ParallelMap."""
    return [fn(*a) for a in args]


class Reader(Protocol):
    """Plans and reads the splits of one kind of source."""

    def splits(self, spec: Any, node: str, urls: list[str], pmap: ParallelMap = serial_map) -> list[Split]:
        """Every split of the source, in order; ``pmap`` runs planning work (e.g. scans) in parallel."""
        ...

    def read(
        self, spec: Any, split: Split, batch_rows: int, bad_row: BadRowHandler | None = None
    ) -> Iterator[pa.Table]:
        """The split's rows, in tables of at most ``batch_rows`` rows. With ``bad_row``, malformed rows
        are reported to it and skipped; without, they raise DataError."""
        ...


def _rechunk(tables: Iterator[pa.Table | pa.RecordBatch], batch_rows: int) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    count = 0
    for t in tables:
        table = pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t
        pending.append(table)
        count += table.num_rows
        while count >= batch_rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, batch_rows)
            rest = whole.slice(batch_rows)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending)


class _CsvReader:
    def splits(
        self, spec: ReadCsv, node: str, urls: list[str], pmap: ParallelMap = serial_map
    ) -> list[Split]:
        files = expand(urls, node=node, suffixes=(".csv", ".tsv", ".txt"))
        schema = self._infer(spec, node, files[0]) if files else None
        ranges: list[tuple[FileRef, ByteRange]] = []
        for f in files:
            fs, path = filesystem(f.url)
            ranges.extend((f, r) for r in plan_ranges(fs, path, spec.split_bytes))
        if spec.quote_char is None:  # without quoting every newline ends a record: nothing to find
            state_at = {(f.url, r.index): False for f, r in ranges}
        else:
            state_at = _quote_states(spec, ranges, pmap)
        out: list[Split] = []
        headers: dict[str, bytes | None] = {}
        for f, r in ranges:
            if f.url not in headers:
                fs, path = filesystem(f.url)
                headers[f.url] = (
                    header_line(fs, path, spec.quote_char, spec.delimiter) if spec.header else None
                )
            # a file's last range ends where the file does: the state there is never needed
            after = state_at[(f.url, r.index + 1)] if r.end < r.file_size else None
            out.append(
                Split(
                    node,
                    len(out),
                    f.url,
                    r.start,
                    r.end,
                    schema=schema,
                    in_quotes=state_at[(f.url, r.index)],
                    end_in_quotes=after,
                    header=headers[f.url],
                )
            )
        return out

    def _infer(self, spec: ReadCsv, node: str, first: FileRef) -> pa.Schema:
        # Infer once, from the start of the first file, so every split and part shares one schema.
        fs, path = filesystem(first.url)
        with fs.open(path, "rb") as fh:
            # Arrow infers from the first block only; handing it the file object would let its
            # read-ahead threads pull several more blocks (10+ MB of a remote file) for nothing.
            head = fh.read(2 * _INFER_BLOCK)
        # malformed rows are the read's business (fail or dead-letter), not the inference's
        options = self._options(spec, None, _INFER_BLOCK, on_invalid=lambda row: "skip")
        try:
            schema = pacsv.open_csv(pa.BufferReader(head), **options).schema
        except pa.ArrowInvalid as exc:
            raise DataError(f"node '{node}': {first.url}: {exc}") from None
        # a column of no values is text; so is one read as binary because a cell of the first block is
        # not UTF-8 (the read checks each text cell under `encoding_errors` instead of turning every
        # cell of the column into bytes), unless binary is what `column_types` asks for
        declared = spec.column_types or {}
        return pa.schema(
            [
                pa.field(f.name, pa.string())
                if pa.types.is_null(f.type) or (pa.types.is_binary(f.type) and f.name not in declared)
                else f
                for f in schema
            ]
        )

    def _options(
        self,
        spec: ReadCsv,
        schema: pa.Schema | None,
        block: int,
        on_invalid: Callable[[Any], str] | None = None,
        as_bytes: list[str] | None = None,
    ) -> dict[str, Any]:
        types = self._types(spec, schema)
        types.update(dict.fromkeys(as_bytes or [], pa.binary()))
        return {
            "read_options": pacsv.ReadOptions(block_size=block, column_names=spec.column_names),
            "parse_options": pacsv.ParseOptions(
                delimiter=spec.delimiter,
                quote_char=spec.quote_char if spec.quote_char is not None else False,
                newlines_in_values=True,
                invalid_row_handler=on_invalid,
            ),
            "convert_options": pacsv.ConvertOptions(
                column_types=types,
                include_columns=spec.columns,
                null_values=spec.null_values,
                strings_can_be_null=True,
            ),
        }

    def _types(self, spec: ReadCsv, schema: pa.Schema | None) -> dict[str, pa.DataType]:
        types: dict[str, pa.DataType] = {f.name: f.type for f in schema} if schema else {}
        for name, type_name in (spec.column_types or {}).items():
            types[name] = pa.type_for_alias(type_name)
        return types

    def read(
        self, spec: ReadCsv, split: Split, batch_rows: int, bad_row: BadRowHandler | None = None
    ) -> Iterator[pa.Table]:
        fs, path = filesystem(split.url)
        size = int(fs.size(path) or 0)
        byte_range = ByteRange(path, split.start, split.end, size, split.index)
        on_invalid = None
        if bad_row is not None:
            handler = bad_row  # pyarrow calls it for each malformed row; "skip" drops the row

            def on_invalid(row: Any) -> str:
                handler(
                    f"expected {row.expected_columns} columns, got {row.actual_columns}", {"text": row.text}
                )
                return "skip"

        # text columns are parsed as bytes and checked as UTF-8 here (see connectors.text_cells)
        text = [n for n, t in self._types(spec, split.schema).items() if pa.types.is_string(t)]

        def parse(as_bytes: list[str]) -> Iterator[pa.Table]:
            options = self._options(spec, split.schema, 16 << 20, on_invalid, as_bytes=as_bytes)
            batches = read_csv_range(
                fs,
                byte_range,
                in_quotes=split.in_quotes,
                end_in_quotes=split.end_in_quotes,
                header=split.header,
                batch_rows=batch_rows,
                **options,
            )
            return _rechunk(batches, batch_rows)

        def locate() -> int | None:
            return _first_invalid_utf8(fs, path, split.start, split.end)

        try:
            # pyarrow checks the text cells as it converts; a range is one parser block, converted
            # whole before its first table, so a cell that is not UTF-8 fails here or never
            tables = parse([])
            try:
                first = next(tables, None)
            except pa.ArrowInvalid as exc:
                if "invalid UTF8" not in str(exc):
                    raise
                # the rare slow path: text columns as bytes, each cell under `encoding_errors`
                tables = decode_text_columns(parse(text), text, spec.encoding_errors, bad_row, locate)
            else:
                tables = itertools.chain([first] if first is not None else [], tables)
            yield from tables
        except InvalidText as exc:
            raise DataError(
                f"node '{split.node}': {split.url}: {exc}",
                node=split.node,
                input={"url": split.url, "split": split.index, "start": split.start, "end": split.end},
            ) from None
        except pa.ArrowInvalid as exc:
            hint = ""
            if "conversion error" in str(exc):
                hint = (
                    "; column types not given in `column_types` were inferred from the first MiB of "
                    "the first file: declare the column's type there (e.g. string)"
                )
            raise DataError(
                f"node '{split.node}': {split.url} (bytes {split.start}-{split.end}): {exc}{hint}",
                node=split.node,
                input={"url": split.url, "split": split.index, "start": split.start, "end": split.end},
            ) from None


def _first_invalid_utf8(fs: Any, path: str, start: int, end: int) -> int | None:
    """The file offset of the first byte in ``[start, end)`` that is not UTF-8, or None."""
    with fs.open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return start + exc.start
    return None


def _quote_states(
    spec: ReadCsv, ranges: list[tuple[FileRef, ByteRange]], pmap: ParallelMap
) -> dict[tuple[str, int], bool]:
    """Whether each range (by file URL and range index) starts inside a quoted field.

    Read from the bytes just before each start; for a file where some start cannot be (no quotes,
    or a quoted field longer than the look-back), every range is scanned for its effect on the quote
    state, in parallel, and the effects are composed in order (see connectors.csv_quotes).
    """
    starts = [(f.url, r.start, spec.quote_char, spec.delimiter) for f, r in ranges if r.start > 0]
    local = dict(zip([(u, at) for u, at, _, _ in starts], pmap(_local_state, starts), strict=True))
    scanned = {u for (u, _), state in local.items() if state is None}
    inner = [(f.url, r, spec.quote_char, spec.delimiter) for f, r in ranges if f.url in scanned]
    effects = dict(zip([(u, r.index) for u, r, _, _ in inner], pmap(_effect, inner), strict=True))
    state_at: dict[tuple[str, int], bool] = {}
    for url in {f.url for f, _ in ranges}:
        mine = [r for f, r in ranges if f.url == url]
        if url in scanned:
            states = range_quote_states([effects[(url, r.index)] for r in mine])
        else:
            states = [bool(local.get((url, r.start), False)) for r in mine]
        state_at.update({(url, r.index): state for r, state in zip(mine, states, strict=True)})
    return state_at


def _local_state(url: str, offset: int, quote_char: str, delimiter: str) -> bool | None:
    fs, path = filesystem(url)
    return csv_local_quote_state(fs, path, offset, quote_char, delimiter)


def _effect(url: str, r: ByteRange, quote_char: str, delimiter: str) -> int:
    fs, _ = filesystem(url)
    return csv_quote_effect(fs, r, quote_char, delimiter)


def _line_splits(node: str, files: list[FileRef], split_bytes: int) -> list[Split]:
    out: list[Split] = []
    for f in files:
        fs, path = filesystem(f.url)
        out.extend(Split(node, len(out), f.url, r.start, r.end) for r in plan_ranges(fs, path, split_bytes))
    return out


def _lines(split: Split, batch_rows: int, encoding: str = "utf-8") -> Iterator[list[str]]:
    fs, path = filesystem(split.url)
    byte_range = ByteRange(path, split.start, split.end, int(fs.size(path) or 0), split.index)
    return read_lines_range(fs, byte_range, batch_rows=batch_rows, encoding=encoding)


def _json_row(line: str) -> dict[str, Any]:
    """One JSONL line as a row; ValueError for a line that is not a JSON object, including one nested
    deeper than Python's parser can follow (its RecursionError would otherwise fail the whole split)."""
    try:
        row = json.loads(line)
    except RecursionError:
        raise ValueError(
            f"nested deeper than the JSON reader can follow (Python's recursion limit, "
            f"{sys.getrecursionlimit()})"
        ) from None
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    return row


class _JsonlReader:
    def splits(
        self, spec: ReadJsonl, node: str, urls: list[str], pmap: ParallelMap = serial_map
    ) -> list[Split]:
        files = expand(urls, node=node, suffixes=(".jsonl", ".json", ".ndjson"))
        return _line_splits(node, files, spec.split_bytes)

    def read(
        self, spec: ReadJsonl, split: Split, batch_rows: int, bad_row: BadRowHandler | None = None
    ) -> Iterator[pa.Table]:
        seen = 0
        for lines in _lines(split, batch_rows):
            rows: list[dict[str, Any]] = []
            for line in lines:
                seen += 1
                if not line.strip():
                    continue
                try:
                    row = _json_row(line)
                except ValueError as exc:
                    message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    if bad_row is None:
                        raise DataError(
                            self._where(split, seen) + f"not a JSON object: {message}",
                            node=split.node,
                            input={
                                "url": split.url,
                                "split": split.index,
                                "start": split.start,
                                "line": seen,
                            },
                        ) from None
                    bad_row(f"line {seen} of the split: {message}", {"text": line})
                    continue
                rows.append(row)
            if rows:
                yield self._table(spec, rows)

    def _where(self, split: Split, line: int) -> str:
        span = f"bytes {split.start}-{split.end}"
        return f"node '{split.node}': {split.url} (line {line} of the split at {span}): "

    def _table(self, spec: ReadJsonl, rows: list[dict[str, Any]]) -> pa.Table:
        table = pa.Table.from_pylist(rows)
        if spec.column_types:
            table = table.cast(
                pa.schema(
                    [
                        pa.field(f.name, pa.type_for_alias(spec.column_types[f.name]))
                        if f.name in spec.column_types
                        else f
                        for f in table.schema
                    ]
                )
            )
        return table.select(spec.columns) if spec.columns else table


class _TextReader:
    def splits(
        self, spec: ReadText, node: str, urls: list[str], pmap: ParallelMap = serial_map
    ) -> list[Split]:
        files = expand(urls, node=node)
        if spec.mode == "line":
            return _line_splits(node, files, spec.split_bytes)
        return [Split(node, i, f.url, 0, f.size) for i, f in enumerate(files)]

    def read(
        self, spec: ReadText, split: Split, batch_rows: int, bad_row: BadRowHandler | None = None
    ) -> Iterator[pa.Table]:
        if spec.mode == "line":
            for lines in _lines(split, batch_rows, spec.encoding):
                yield pa.table({spec.column: pa.array(lines, pa.string())})
            return
        fs, path = filesystem(split.url)
        with fs.open(path, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode(spec.encoding)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"node '{split.node}': {split.url} (byte {exc.start}): not {spec.encoding} text"
            ) from None
        yield pa.table({"path": [split.url], spec.column: [text]})


class _ParquetReader:
    def splits(
        self, spec: ReadParquet, node: str, urls: list[str], pmap: ParallelMap = serial_map
    ) -> list[Split]:
        out: list[Split] = []
        for f in expand(urls, node=node, suffixes=(".parquet", ".pq")):
            fs, path = filesystem(f.url)
            try:
                with fs.open(path, "rb") as fh:
                    meta = pq.ParquetFile(fh).metadata
            except (pa.ArrowException, OSError) as exc:  # truncated, not Parquet, unreadable
                raise DataError(
                    f"node '{node}': {f.url} is not a readable Parquet file ({type(exc).__name__}: {exc}); "
                    "check that it was written whole and is Parquet, or leave it out of the path",
                    node=node,
                    input={"url": f.url},
                ) from None
            if meta.num_row_groups == 0:
                out.append(Split(node, len(out), f.url, 0, 0, row_group=0))
            for rg in range(meta.num_row_groups):
                group = meta.row_group(rg)
                columns = [group.column(i) for i in range(group.num_columns)]
                start = min((c.data_page_offset for c in columns), default=0)
                size = sum(c.total_compressed_size for c in columns)
                # the row group's own bytes, so progress and MB/s count each byte once
                out.append(Split(node, len(out), f.url, start, start + size, row_group=rg))
        return out

    def read(
        self, spec: ReadParquet, split: Split, batch_rows: int, bad_row: BadRowHandler | None = None
    ) -> Iterator[pa.Table]:
        fs, path = filesystem(split.url)
        # a local path opens as a native Arrow file, read without calling back into Python
        with pa.OSFile(path, "rb") if is_local(fs) else fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if pf.metadata.num_row_groups == 0:
                return
            for batch in pf.iter_batches(
                batch_size=batch_rows, row_groups=[split.row_group or 0], columns=spec.columns
            ):
                yield pa.Table.from_batches([batch])


CSV: Reader = _CsvReader()
JSONL: Reader = _JsonlReader()
TEXT: Reader = _TextReader()
PARQUET: Reader = _ParquetReader()
"""The built-in readers, registered for their ops in :mod:`connectors` (``reader`` behaviour)."""


def reader_for(spec: SourceSpec) -> Reader:
    """The reader of a source node's op, from the op registry (a plugin's source has its own)."""
    reader: Reader | None = behaviour(spec.op, "reader")
    if reader is None:
        raise HeadraceError(f"op '{spec.op}' has no reader registered (register_op(..., reader=...))")
    return reader
