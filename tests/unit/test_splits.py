"""Byte-range splits: every record is read by exactly one range, whatever the cut points."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors import csv_quotes, splits
from connectors.csv_quotes import csv_local_quote_state, csv_quote_effect, range_quote_states
from connectors.readers import CSV, Split
from connectors.sources import ReadCsv
from connectors.splits import (
    ByteRange,
    header_line,
    plan_ranges,
    read_csv_range,
    read_lines_range,
    read_range_bytes,
)

SETTINGS = settings(max_examples=150, deadline=None)

LOCAL = fsspec.filesystem("file")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Hypothesis runs many examples per test; a module-scoped folder avoids its function-scoped
    # fixture health check. Each example overwrites its own file.
    return tmp_path_factory.mktemp("splits")


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# ---- reference implementations: obviously correct sequential scans ---------------------------


FIELD_START, IN_FIELD, QUOTED, QUOTE_IN_QUOTED = range(4)


def _ref_machine(data: bytes, quote: int | None, delimiter: int = ord(",")) -> list[int]:
    """pyarrow's parser state after each prefix of `data` (quoting as its BlockParser does it: a
    quote opens a field only at a field start, a doubled quote inside one is literal, and after
    the closing quote the field goes on unquoted), one byte at a time."""
    states, state = [FIELD_START], FIELD_START
    for byte in data:
        if state == QUOTED:
            state = QUOTE_IN_QUOTED if byte == quote else QUOTED
        elif state == QUOTE_IN_QUOTED and byte == quote:
            state = QUOTED  # a doubled quote
        elif byte in (delimiter, 0x0A, 0x0D):
            state = FIELD_START
        elif state == FIELD_START and byte == quote:
            state = QUOTED
        else:
            state = IN_FIELD
        states.append(state)
    return states


def _ref_record_starts(data: bytes, quote: int | None) -> list[int]:
    """Offsets where records start: 0 and after every newline outside quotes (not at EOF)."""
    states = _ref_machine(data, quote)
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A and states[i] != QUOTED]
    return [s for s in starts if s < len(data)]


def _ref_states(data: bytes, quote: int) -> list[bool]:
    """Whether each offset 0..len(data) lies inside a quoted field. An offset inside a run of
    quotes takes the state after the whole run (the run is counted by the range it starts in)."""
    states = _ref_machine(data, quote)
    inside = [
        state == QUOTED or (state == QUOTE_IN_QUOTED and i < len(data) and data[i] == quote)
        for i, state in enumerate(states)
    ]
    for i in range(len(data) - 1, 0, -1):
        if data[i - 1] == quote and data[i] == quote:
            inside[i] = inside[i + 1]
    return inside


def _ref_owned(data: bytes, starts: list[int], r: ByteRange) -> bytes:
    """The bytes of the records starting in [r.start, r.end)."""
    owned = [s for s in starts if r.start <= s < r.end]
    if not owned:
        return b""
    after = [s for s in starts if s >= r.end]
    return data[owned[0] : after[0] if after else len(data)]


def _ref_lines(data: bytes) -> list[str]:
    lines = data.decode().split("\n")
    if data.endswith(b"\n") or not data:
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


@contextlib.contextmanager
def _small_reads(chunk: int) -> Iterator[None]:
    """Read and scan in chunks of `chunk` bytes, start boundary searches at one byte, then double,
    and read on through a quote run one byte at a time."""
    with (
        mock.patch.object(splits, "_CHUNK_BYTES", chunk),
        mock.patch.object(splits, "_SEARCH_BYTES", 1),
        mock.patch.object(csv_quotes, "_READ_BYTES", chunk),
        mock.patch.object(csv_quotes, "_SCAN_BYTES", chunk),
        mock.patch.object(csv_quotes, "_RUN_READ_BYTES", 1),
    ):
        yield


def _states_for(path: str, ranges: list[ByteRange], quote_char: str = '"') -> list[bool]:
    return range_quote_states([csv_quote_effect(LOCAL, r, quote_char) for r in ranges])


def _end_states(starts: list[bool], known: bool) -> list[bool | None]:
    """The quote state at each range's end as the runtime passes it (the next range's start state;
    None for the last range), or None everywhere when ``known`` is False (the reader counts)."""
    return [*starts[1:], None] if known else [None] * len(starts)


def _string_options(ncols: int, quote_char: str = '"') -> dict:
    return {
        "read_options": pacsv.ReadOptions(),
        "parse_options": pacsv.ParseOptions(quote_char=quote_char, newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types={f"c{i}": pa.string() for i in range(ncols)},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    }


def _read_csv_split(
    path: str, target: int, ncols: int, batch_rows: int, quote_char: str = '"', known_end: bool = True
) -> list[pa.RecordBatch]:
    ranges = plan_ranges(LOCAL, path, target)
    header = header_line(LOCAL, path, quote_char)
    batches: list[pa.RecordBatch] = []
    starts = _states_for(path, ranges, quote_char)
    for r, inside, end in zip(ranges, starts, _end_states(starts, known_end), strict=True):
        got = list(
            read_csv_range(
                LOCAL,
                r,
                in_quotes=inside,
                end_in_quotes=end,
                header=header,
                batch_rows=batch_rows,
                **_string_options(ncols, quote_char),
            )
        )
        # Exactly batch_rows per batch except the range's last one.
        assert all(b.num_rows == batch_rows for b in got[:-1])
        assert all(0 < b.num_rows <= batch_rows for b in got)
        batches.extend(got)
    return batches


def _rows(batches: list[pa.RecordBatch]) -> list[dict]:
    return [row for b in batches for row in b.to_pylist()]


# ---- plan_ranges ----------------------------------------------------------------------------


@SETTINGS
@given(size=st.integers(0, 5000), target=st.integers(1, 600))
def test_plan_ranges_cover_the_file_without_gaps_or_overlaps(work_dir: Path, size, target):
    path = _write(work_dir / "plan.bin", b"x" * size)
    ranges = plan_ranges(LOCAL, path, target)
    assert ranges[0].start == 0 and ranges[-1].end == size
    assert [r.index for r in ranges] == list(range(len(ranges)))
    for a, b in itertools.pairwise(ranges):
        assert a.end == b.start and a.start < a.end
    assert all(r.end - r.start <= target and r.file_size == size for r in ranges)
    assert len(ranges) == max(1, -(-size // target))


def test_plan_ranges_gives_one_range_for_an_empty_file(tmp_path: Path):
    path = _write(tmp_path / "empty.csv", b"")
    assert plan_ranges(LOCAL, path, 10) == [ByteRange(path, 0, 0, 0, 0)]


def test_plan_ranges_only_asks_for_the_size():
    class SizeOnly:
        def size(self, path: str) -> int:
            return 1000

    ranges = plan_ranges(SizeOnly(), "big.csv", 300)  # type: ignore[arg-type]
    assert [(r.start, r.end) for r in ranges] == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_plan_ranges_rejects_a_nonpositive_target(tmp_path: Path):
    with pytest.raises(ValueError, match="target_bytes"):
        plan_ranges(LOCAL, _write(tmp_path / "a", b"abc"), 0)


# ---- quote states and raw range bytes against the sequential scanner ---------------------------

QUOTEY_BYTES = st.lists(st.sampled_from([b'"', b"\n", b"\r\n", b"a", b",", b'""', "ü中".encode()]))


@SETTINGS
@given(pieces=QUOTEY_BYTES, target=st.integers(1, 40), chunk=st.integers(1, 16))
def test_composed_range_effects_are_the_quote_state_at_each_range_start(work_dir, pieces, target, chunk):
    data = b"".join(pieces)
    path = _write(work_dir / "effects.csv", data)
    ranges = plan_ranges(LOCAL, path, target)
    expected = _ref_states(data, ord('"'))
    with _small_reads(chunk):
        assert _states_for(path, ranges) == [expected[r.start] for r in ranges]


@SETTINGS
@given(pieces=QUOTEY_BYTES, offset=st.integers(0, 400), look_back=st.integers(1, 40))
def test_a_quote_state_read_from_the_bytes_before_is_the_true_one(work_dir, pieces, offset, look_back):
    data = b"".join(pieces)
    path = _write(work_dir / "local.csv", data)
    offset = min(offset, len(data))
    state = csv_local_quote_state(LOCAL, path, offset, look_back=look_back)
    if offset <= look_back:
        assert state is not None  # the look-back reaches the start of the file
    assert state in (None, _ref_states(data, ord('"'))[offset])


def test_a_closing_quote_fixes_the_state_and_a_long_quoted_field_does_not(tmp_path: Path):
    data = b"id,text\n" + b"".join(b'%d,"x ""q"" y"\n' % i for i in range(200))
    path = _write(tmp_path / "q.csv", data)
    assert csv_local_quote_state(LOCAL, path, len(data) // 2, look_back=64) is False
    long_field = b'1,"' + b"a\n" * 100 + b'"\n'
    path = _write(tmp_path / "long.csv", long_field)
    assert csv_local_quote_state(LOCAL, path, 150, look_back=64) is None
    assert csv_local_quote_state(LOCAL, path, 150, look_back=1000) is True


@SETTINGS
@given(
    pieces=QUOTEY_BYTES,
    target=st.integers(1, 40),
    chunk=st.integers(1, 16),
    skip_header=st.booleans(),
    known_end=st.booleans(),
)
# a literal quote in an unquoted field (pyarrow reads `a"` as text), then a newline that ends it
@example(
    pieces=[b"a", b'"', b"\n", b"a", b",", b"a", b"\n"], target=1, chunk=1, skip_header=False, known_end=True
)
# the text after a closing quote is unquoted: its quote is literal too
@example(
    pieces=[b'"', b"a", b'"', b"a", b'"', b"\n", b"a", b"\n"],
    target=2,
    chunk=3,
    skip_header=False,
    known_end=True,
)
def test_csv_range_bytes_are_exactly_the_records_starting_in_the_range(
    work_dir, pieces, target, chunk, skip_header, known_end
):
    # Any byte soup, even malformed CSV: the ranges must agree with one sequential scan, whether
    # the state at each range's end is given (as the runtime does) or counted by the reader.
    data = b"".join(pieces)
    path = _write(work_dir / "bytes.csv", data)
    starts = _ref_record_starts(data, ord('"'))
    if skip_header:
        starts = starts[1:]
    ranges = plan_ranges(LOCAL, path, target)
    states = _states_for(path, ranges)
    with _small_reads(chunk):  # exercise every chunk edge
        got = [
            read_range_bytes(LOCAL, r, kind="csv", in_quotes=q, end_in_quotes=e, skip_header=skip_header)
            for r, q, e in zip(ranges, states, _end_states(states, known_end), strict=True)
        ]
    for r, (owned, offset) in zip(ranges, got, strict=True):
        assert owned == _ref_owned(data, starts, r)
        if owned:
            assert data[offset : offset + len(owned)] == owned
    assert b"".join(owned for owned, _ in got) == (data[starts[0] :] if starts else b"")


@SETTINGS
@given(pieces=QUOTEY_BYTES, target=st.integers(1, 40), chunk=st.integers(1, 16))
def test_lines_range_bytes_ignore_quotes(work_dir, pieces, target, chunk):
    data = b"".join(pieces)
    path = _write(work_dir / "bytes.txt", data)
    starts = _ref_record_starts(data, None)
    with _small_reads(chunk):
        for r in plan_ranges(LOCAL, path, target):
            owned, _ = read_range_bytes(LOCAL, r, kind="lines")
            assert owned == _ref_owned(data, starts, r)


# ---- CSV through pyarrow ----------------------------------------------------------------------

FIELD = st.lists(
    st.sampled_from(["a", "bc", " ", ",", '"', "'", '""', "\n", "\r\n", "\r", "ü", "—", "中"]),
    max_size=6,
).map("".join)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, int, str, list[list[str]]]:
    ncols = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(FIELD, min_size=ncols, max_size=ncols), max_size=25))
    quote_char = draw(st.sampled_from(['"', "'"]))
    newline = draw(st.sampled_from(["\r\n", "\n"]))
    # The csv module quotes only fields holding characters of its own line terminator, so write
    # with "\r\n" (a bare "\r" must be quoted: pyarrow ends records on it) and swap the ending.
    out = io.StringIO(newline="")
    for row in [[f"c{i}" for i in range(ncols)], *rows]:
        line = io.StringIO(newline="")
        csv.writer(line, quotechar=quote_char, lineterminator="\r\n").writerow(row)
        out.write(line.getvalue()[:-2] + newline)
    return out.getvalue().encode(), ncols, quote_char, rows


@SETTINGS
@given(
    file=csv_files(),
    target=st.integers(1, 200),
    batch_rows=st.integers(1, 5),
    chunk=st.sampled_from([1, 3, 64, 4 << 20]),
    known_end=st.booleans(),
)
def test_csv_ranges_read_the_same_rows_as_one_whole_file_read(
    work_dir, file, target, batch_rows, chunk, known_end
):
    data, ncols, quote_char, rows = file
    path = _write(work_dir / "rows.csv", data)
    whole = pacsv.read_csv(path, **_string_options(ncols, quote_char))
    with _small_reads(chunk):
        got = _rows(_read_csv_split(path, target, ncols, batch_rows, quote_char, known_end))
    assert got == whole.to_pylist()
    # pyarrow keeps \r\n inside quoted values; the rows are the ones written.
    assert [list(row.values()) for row in got] == rows


LAX_TEXT = st.lists(st.sampled_from(["a", " ", '"', "ü"]), max_size=4).map("".join)
QUOTED_TEXT = st.lists(st.sampled_from(["a", ",", '""', "\n", "\r\n", "中"]), max_size=4).map("".join)


@st.composite
def lax_csv_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """CSV as people write it and pyarrow reads it: quotes inside unquoted fields (`5" screen`),
    and text after a field's closing quote (`"a"b"`), beside proper quoted fields."""
    ncols = draw(st.integers(1, 3))

    def field() -> str:
        unquoted = draw(LAX_TEXT)
        if draw(st.booleans()):
            return unquoted.lstrip('"') or "x"  # a quote at a field's start would open it
        # a quote right after the closing one would double it: the trailer starts otherwise
        return '"' + draw(QUOTED_TEXT) + '"' + draw(LAX_TEXT).lstrip('"')

    lines = [",".join(f"c{i}" for i in range(ncols))]
    lines += [",".join(field() for _ in range(ncols)) for _ in range(draw(st.integers(0, 20)))]
    return ("\n".join(lines) + "\n").encode(), ncols


@SETTINGS
@given(
    file=lax_csv_files(),
    target=st.integers(1, 120),
    chunk=st.sampled_from([1, 3, 64]),
    known_end=st.booleans(),
)
def test_lax_csv_ranges_read_the_same_rows_as_one_whole_file_read(work_dir, file, target, chunk, known_end):
    data, ncols = file
    path = _write(work_dir / "lax.csv", data)
    whole = pacsv.read_csv(path, **_string_options(ncols))
    with _small_reads(chunk):
        got = _rows(_read_csv_split(path, target, ncols, 3, known_end=known_end))
    assert got == whole.to_pylist()


def test_csv_source_reads_literal_quotes_in_unquoted_fields_like_one_whole_read(tmp_path: Path):
    # 5" screens and text after closing quotes, then quoted fields over several lines: split at
    # every few hundred bytes, the states come from the bytes before each range, or from scanning
    # every range when the look-back is too short to find them
    rows = [f'{i},5" screen {i},"line\nbreak ""{i}"""tail"' for i in range(3_000)]
    path = tmp_path / "lax.csv"
    path.write_bytes(("id,size,notes\n" + "\n".join(rows) + "\n").encode())
    reader = CSV
    spec = ReadCsv(op="read_csv", path=str(path), split_bytes=500)
    whole = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    for look_back in (csv_quotes.LOOK_BACK_BYTES, 8):
        with mock.patch.object(csv_quotes, "LOOK_BACK_BYTES", look_back):
            found = reader.splits(spec, "input", [str(path)])
        assert len(found) > 100 and any(s.in_quotes for s in found)
        table = pa.concat_tables(t for s in found for t in reader.read(spec, s, 1_000))
        assert table.num_rows == 3_000 and table.equals(whole.cast(table.schema))


def test_csv_without_quoting_takes_quotes_as_text_and_plans_without_reading(tmp_path: Path):
    # with quote_char null every newline ends a record: `"abc` and `def"` are two rows, and planning
    # never looks at the bytes for quote states
    rows = [f'{i},"open {i}' if i % 2 else f'{i},close {i}" and 5" screen' for i in range(2_000)]
    path = tmp_path / "unquoted.csv"
    path.write_bytes(("id,text\n" + "\n".join(rows) + "\n").encode())
    reader = CSV
    spec = ReadCsv.model_validate(
        {"op": "read_csv", "path": str(path), "split_bytes": 300, "quote_char": None}
    )

    def no_planning_reads(fn: object, items: list[object]) -> list[object]:
        raise AssertionError(f"planning ran {fn} over {len(items)} items")

    found = reader.splits(spec, "input", [str(path)], pmap=no_planning_reads)
    assert len(found) > 50 and not any(s.in_quotes or s.end_in_quotes for s in found)
    table = pa.concat_tables(t for s in found for t in reader.read(spec, s, 100))
    whole = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(quote_char=False))
    assert table.num_rows == 2_000 and table.equals(whole.cast(table.schema))
    assert table["text"][1].as_py() == '"open 1'
    quoted = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert quoted.num_rows < 2_000  # the same bytes with quoting: fields run over newlines


def test_csv_quotes_at_every_possible_range_edge(tmp_path: Path):
    rows = [['"', ""], ['a,"b"', "x\r\ny"], ['""', '"\n"'], ["中", "\n"], ["", '"']]
    out = io.StringIO(newline="")
    csv.writer(out).writerows([["c0", "c1"], *rows])
    data = out.getvalue().encode()
    path = _write(tmp_path / "edges.csv", data)
    for target, known_end in itertools.product(range(1, len(data) + 2), (True, False)):
        got = _rows(_read_csv_split(path, target, 2, batch_rows=2, known_end=known_end))
        assert [[r["c0"], r["c1"]] for r in got] == rows, (target, known_end)


def test_csv_without_header_takes_names_from_read_options(tmp_path: Path):
    path = _write(tmp_path / "noheader.csv", b'1,"a\nb"\n2,c\n3,"d,e"\n')
    ranges = plan_ranges(LOCAL, path, 4)
    opts = _string_options(2)
    opts["read_options"] = pacsv.ReadOptions(column_names=["c0", "c1"])
    batches = [
        b
        for r, q in zip(ranges, _states_for(path, ranges), strict=True)
        for b in read_csv_range(LOCAL, r, in_quotes=q, header=None, batch_rows=10, **opts)
    ]
    assert _rows(batches) == [
        {"c0": "1", "c1": "a\nb"},
        {"c0": "2", "c1": "c"},
        {"c0": "3", "c1": "d,e"},
    ]


def test_a_range_of_only_blank_lines_yields_no_rows_without_a_header(tmp_path: Path):
    path = _write(tmp_path / "blank.csv", b"1,2\n\n\r\n\n\n\n\n\n3,4\n")
    opts = _string_options(2)
    opts["read_options"] = pacsv.ReadOptions(autogenerate_column_names=True)
    opts["convert_options"] = pacsv.ConvertOptions(strings_can_be_null=False)
    per_range = [
        _rows(list(read_csv_range(LOCAL, r, in_quotes=False, header=None, batch_rows=5, **opts)))
        for r in plan_ranges(LOCAL, path, 3)
    ]
    assert [rows for rows in per_range if rows] == [[{"f0": 1, "f1": 2}], [{"f0": 3, "f1": 4}]]


def test_header_line_spans_quoted_newlines_and_may_outgrow_a_range(tmp_path: Path):
    data = b'"long\nname",b\r\n1,2\r\n3,4\r\n'
    path = _write(tmp_path / "h.csv", data)
    assert header_line(LOCAL, path) == b'"long\nname",b\r\n'
    ranges = plan_ranges(LOCAL, path, 8)
    states = _states_for(path, ranges)
    assert states[1] is True  # the cut at byte 8 falls inside the quoted header name
    owned = [
        read_range_bytes(LOCAL, r, kind="csv", in_quotes=q, skip_header=True)[0]
        for r, q in zip(ranges, states, strict=True)
    ]
    assert owned[:2] == [b"", b""] and b"".join(owned) == b"1,2\r\n3,4\r\n"
    header = header_line(LOCAL, path)
    batches = [
        b
        for r, q in zip(ranges, states, strict=True)
        for b in read_csv_range(
            LOCAL,
            r,
            in_quotes=q,
            header=header,
            read_options=None,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=None,
            batch_rows=10,
        )
    ]
    assert _rows(batches) == [{"long\nname": 1, "b": 2}, {"long\nname": 3, "b": 4}]


def test_header_only_file_reads_no_rows(tmp_path: Path):
    path = _write(tmp_path / "h.csv", b"c0,c1")
    assert header_line(LOCAL, path) == b"c0,c1"
    assert _rows(_read_csv_split(path, 2, 2, 10)) == []


def test_ranges_read_from_any_fsspec_filesystem():
    fs = fsspec.filesystem("memory")
    fs.pipe("/splits/m.csv", b'c0,c1\n1,"x\ny"\n2,z\n')
    ranges = plan_ranges(fs, "/splits/m.csv", 5)
    states = range_quote_states([csv_quote_effect(fs, r) for r in ranges])
    header = header_line(fs, "/splits/m.csv")
    batches = [
        b
        for r, q in zip(ranges, states, strict=True)
        for b in read_csv_range(fs, r, in_quotes=q, header=header, batch_rows=1, **_string_options(2))
    ]
    assert _rows(batches) == [{"c0": "1", "c1": "x\ny"}, {"c0": "2", "c1": "z"}]
    fs.rm("/splits/m.csv")


def test_a_range_reads_its_own_bytes_plus_one_record_not_the_whole_file(tmp_path: Path):
    data = b"".join(b"%d,some text here\n" % i for i in range(100_000))
    path = _write(tmp_path / "big.csv", data)

    class CountingFS:
        read_bytes = 0

        def open(self, path: str, mode: str = "rb") -> CountingFile:
            return CountingFile(open(path, mode), self)

    class CountingFile(io.RawIOBase):
        def __init__(self, f: io.BufferedReader, fs: CountingFS) -> None:
            self.f, self.fs = f, fs

        def read(self, n: int = -1) -> bytes:
            out = self.f.read(n)
            self.fs.read_bytes += len(out)
            return out

        def readinto(self, b: memoryview) -> int:
            n = self.f.readinto(b)
            self.fs.read_bytes += n
            return n

        def seek(self, pos: int, whence: int = 0) -> int:
            return self.f.seek(pos, whence)

        def close(self) -> None:
            self.f.close()

    fs = CountingFS()
    r = ByteRange(path, 500_000, 510_000, len(data), 50)
    with _small_reads(4096):
        owned, _ = read_range_bytes(fs, r, kind="csv")  # type: ignore[arg-type]
    assert owned and owned.endswith(b"\n")
    assert fs.read_bytes <= 10_000 + 2 * 4096


# ---- JSONL and text ---------------------------------------------------------------------------

TEXT = st.text(st.sampled_from(["a", "b", " ", '"', "\n", "\r", "\\", "ü", "—", "中", "\u2028"]))


@SETTINGS
@given(
    rows=st.lists(st.fixed_dictionaries({"id": st.integers(), "text": TEXT})),
    ascii_only=st.booleans(),
    target=st.integers(1, 200),
    batch_rows=st.integers(1, 4),
)
def test_jsonl_ranges_read_every_object_once_in_order(work_dir, rows, ascii_only, target, batch_rows):
    data = "".join(json.dumps(row, ensure_ascii=ascii_only) + "\n" for row in rows).encode()
    path = _write(work_dir / "rows.jsonl", data)
    lines: list[str] = []
    for r in plan_ranges(LOCAL, path, target):
        for batch in read_lines_range(LOCAL, r, batch_rows=batch_rows):
            assert 0 < len(batch) <= batch_rows
            lines.extend(batch)
    assert lines == _ref_lines(data)
    assert [json.loads(line) for line in lines] == rows


@SETTINGS
@given(
    lines=st.lists(st.text(st.sampled_from(["a", " ", "\t", "ü", "中", '"', ","]))),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
    target=st.integers(1, 200),
    chunk=st.sampled_from([1, 2, 7, 4 << 20]),
)
def test_text_ranges_read_every_line_once_in_order(work_dir, lines, newline, final_newline, target, chunk):
    data = (newline.join(lines) + (newline if final_newline and lines else "")).encode()
    path = _write(work_dir / "lines.txt", data)
    with _small_reads(chunk):
        got = [
            line
            for r in plan_ranges(LOCAL, path, target)
            for batch in read_lines_range(LOCAL, r, batch_rows=3)
            for line in batch
        ]
    assert got == _ref_lines(data)
    if final_newline or (lines and lines[-1]):
        assert got == lines


def test_text_edge_files(tmp_path: Path):
    cases = {
        b"": [],
        b"\n": [""],
        b"one\r\ntwo": ["one", "two"],
        b"one\n\n\ntwo\n": ["one", "", "", "two"],
    }
    for data, expected in cases.items():
        path = _write(tmp_path / "edge.txt", data)
        for target in (1, 2, 100):
            got = [
                line
                for r in plan_ranges(LOCAL, path, target)
                for batch in read_lines_range(LOCAL, r, batch_rows=10)
                for line in batch
            ]
            assert got == expected, (data, target)


@pytest.mark.parametrize("tail", [b"", b"\n", b"\nshort\n"])
def test_one_huge_line_is_read_by_exactly_one_range(tmp_path: Path, tail: bytes):
    huge = "é".encode() * 5000
    path = _write(tmp_path / "huge.txt", huge + tail)
    per_range = [
        [line for batch in read_lines_range(LOCAL, r, batch_rows=10) for line in batch]
        for r in plan_ranges(LOCAL, path, 100)
    ]
    assert per_range[0] == ["é" * 5000]
    assert [lines for lines in per_range[1:] if lines] == ([["short"]] if b"short" in tail else [])


# ---- a realistic file -------------------------------------------------------------------------


def _big_csv(path: Path, target_bytes: int) -> int:
    rng = random.Random(7)
    pool = [
        "",
        "plain",
        "with, comma",
        'say "hi"',
        "two\nlines",
        "crlf\r\ninside",
        "ü—中 naïve café",
        '""',
        "x" * 200,
        '"\n,"',
        " lead and trail ",
    ]
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["c0", "c1", "c2", "c3", "c4"])
        while f.tell() < target_bytes:
            block = [[str(rows + i), *rng.choices(pool, k=4)] for i in range(10_000)]
            writer.writerows(block)
            rows += len(block)
    return rows


def test_twenty_megabyte_csv_split_at_one_mebibyte_matches_a_whole_read(tmp_path: Path):
    path = tmp_path / "big.csv"
    rows = _big_csv(path, 20 * 1024 * 1024)
    opts = _string_options(5)
    whole = pacsv.read_csv(path, **opts)
    assert whole.num_rows == rows
    assert len(plan_ranges(LOCAL, str(path), 1024 * 1024)) >= 20
    for known_end in (True, False):
        batches = _read_csv_split(str(path), 1024 * 1024, 5, batch_rows=50_000, known_end=known_end)
        assert pa.Table.from_batches(batches).equals(whole)


def test_quoted_crlf_is_kept_whatever_block_size_the_caller_asks_for(tmp_path: Path):
    # pyarrow's parser loses the "\n" of a quoted "\r\n" that straddles two of its blocks; a range
    # is parsed as one block, so a tiny block size asked for by the caller changes nothing.
    path = tmp_path / "crlf.csv"
    values = [f"row {i}\r\nnext line" for i in range(300)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["v"])
        writer.writerows([v] for v in values)
    fs = fsspec.filesystem("file")
    (whole,) = plan_ranges(fs, str(path), 1 << 30)
    batches = read_csv_range(
        fs,
        whole,
        in_quotes=False,
        header=header_line(fs, str(path)),
        read_options=pacsv.ReadOptions(block_size=97),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=None,
        batch_rows=1000,
    )
    assert [v for b in batches for v in b.column("v").to_pylist()] == values


def test_csv_source_splits_carry_each_range_end_state_and_read_every_row_once(tmp_path: Path):
    path = tmp_path / "big.csv"
    rows = _big_csv(path, 3 * 1024 * 1024)
    reader = CSV

    def read(split_bytes: int) -> tuple[list[Split], pa.Table]:
        spec = ReadCsv(op="read_csv", path=str(path), split_bytes=split_bytes)
        found = reader.splits(spec, "input", [str(path)])
        return found, pa.concat_tables(t for s in found for t in reader.read(spec, s, 5_000))

    split_list, table = read(200_000)
    (_, whole) = read(1 << 30)
    assert len(split_list) > 10 and any(s.in_quotes for s in split_list)
    assert [s.end_in_quotes for s in split_list[:-1]] == [s.in_quotes for s in split_list[1:]]
    assert split_list[-1].end_in_quotes is None  # the last range ends with the file
    assert table.num_rows == rows and table.equals(whole)


def test_scanning_a_range_for_its_quote_state_takes_little_memory(tmp_path: Path):
    # the runs of a 16 MB range are found with byte-sized temporaries: a scan once widened them to
    # int64 and held 1 GB for the last 64 MB range of a file
    import tracemalloc

    data = b'1,"a ""b"" c",0.5\n' * (16_000_000 // 18)
    path = _write(tmp_path / "runs.csv", data)
    (whole,) = plan_ranges(LOCAL, path, len(data))
    tracemalloc.start()
    try:
        owned, _ = read_range_bytes(LOCAL, whole, kind="csv", in_quotes=False, end_in_quotes=None)
        effect = csv_quote_effect(LOCAL, whole)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert owned == data and effect == csv_quotes.SET_OUT
    assert peak < 3 * len(data)  # the bytes returned, and the scan's 1 MiB at a time
