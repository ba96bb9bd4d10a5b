"""A corpus of hostile inputs read by the sources themselves (no Ray): each is read whole, or its bad
rows are set aside (dead letters) with the split's other rows kept, or the read fails naming the file
and the place; data is never silently changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.readers import CSV, JSONL, Reader
from connectors.sources import ReadCsv, ReadJsonl
from engine.errors import DataError


def _read(reader: Reader, spec: Any, path: Path, bad: list[tuple[str, dict[str, Any]]] | None) -> list[dict]:
    handler = None if bad is None else (lambda error, row: bad.append((error, row)))
    splits = reader.splits(spec, "input", [str(path)])
    return [row for s in splits for t in reader.read(spec, s, 1000, handler) for row in t.to_pylist()]


DEEP = '{"a": ' * 5_000 + "1" + "}" * 5_000


def test_a_jsonl_line_nested_5000_deep_is_a_bad_row_and_the_splits_other_rows_are_kept(
    tmp_path: Path,
) -> None:
    src = tmp_path / "deep.jsonl"
    src.write_text(f'{{"id": 1}}\n{DEEP}\n{{"id": 3}}\n')
    spec = ReadJsonl(op="read_jsonl", path=str(src))
    bad: list[tuple[str, dict[str, Any]]] = []
    assert _read(JSONL, spec, src, bad) == [{"id": 1}, {"id": 3}]
    ((error, row),) = bad
    assert "line 2 of the split" in error and "nested deeper" in error
    assert row == {"text": DEEP}


def test_a_jsonl_line_nested_5000_deep_fails_naming_file_and_line_without_dead_letters(
    tmp_path: Path,
) -> None:
    src = tmp_path / "deep.jsonl"
    src.write_text(f'{{"id": 1}}\n{DEEP}\n')
    with pytest.raises(DataError) as caught:
        _read(JSONL, ReadJsonl(op="read_jsonl", path=str(src)), src, None)
    assert f"{src} (line 2 of the split" in str(caught.value) and "nested deeper" in str(caught.value)


# One invalid UTF-8 cell (\xe9, Latin-1's é) among valid ones, in the first block (where pyarrow would
# infer the whole column as binary) and past the first MiB (where the column is inferred as text).
LATIN1 = b"id,text\n1,caf\xe9\n2,ok\n3,\xc3\xa9t\xc3\xa9\n"
FAR = (
    b"id,text\n"
    + b"".join(b"%d,row %d\n" % (i, i) for i in range(100_000))
    + b"100000,caf\xe9\n100001,\xc3\xa9\n"
)


def _csv(tmp_path: Path, data: bytes, **fields: Any) -> tuple[Path, ReadCsv]:
    src = tmp_path / "in.csv"
    src.write_bytes(data)
    return src, ReadCsv(op="read_csv", path=str(src), **fields)


@pytest.mark.parametrize("data", [LATIN1, FAR], ids=["first_block", "past_the_first_mib"])
def test_an_invalid_utf8_cell_fails_the_read_naming_file_byte_offset_row_and_column(
    tmp_path: Path, data: bytes
) -> None:
    src, spec = _csv(tmp_path, data)
    with pytest.raises(DataError) as caught:
        _read(CSV, spec, src, None)
    message = str(caught.value)
    assert f"{src}: byte {data.index(bytes([0xE9]))}" in message and "column 'text'" in message, message
    assert "encoding_errors: replace" in message


@pytest.mark.parametrize("data", [LATIN1, FAR], ids=["first_block", "past_the_first_mib"])
def test_an_invalid_utf8_cells_row_is_set_aside_and_every_valid_cell_comes_out_unchanged(
    tmp_path: Path, data: bytes
) -> None:
    src, spec = _csv(tmp_path, data)
    bad: list[tuple[str, dict[str, Any]]] = []
    rows = _read(CSV, spec, src, bad)
    expected = [
        {"id": int(i), "text": t.decode()}
        for i, t in (line.split(b",") for line in data.splitlines()[1:])
        if b"\xe9" not in t or b"\xc3" in t
    ]
    assert rows == expected  # all text, none of it bytes; the é of row "été" intact
    bad_id = int(data[: data.index(b",caf")].rsplit(b"\n", 1)[1])
    ((error, row),) = bad
    assert "column 'text': invalid UTF-8" in error and row == {"row": {"id": bad_id, "text": "caf\\xe9"}}


def test_encoding_errors_replace_reads_the_invalid_byte_as_u_fffd_and_fail_ignores_dead_letters(
    tmp_path: Path,
) -> None:
    src, spec = _csv(tmp_path, LATIN1, encoding_errors="replace")
    assert [r["text"] for r in _read(CSV, spec, src, None)] == ["caf\ufffd", "ok", "été"]
    src, spec = _csv(tmp_path, LATIN1, encoding_errors="fail")
    with pytest.raises(DataError, match="encoding_errors: fail"):
        _read(CSV, spec, src, [])  # a bad-row handler (on_error dead_letter) does not take it


def test_a_csv_field_larger_than_any_parser_block_is_read_with_every_row_of_its_split(tmp_path: Path) -> None:
    # 20 MB: more than the 16 MiB block the reader once parsed in, and pyarrow's 1 MiB default; each
    # byte range is parsed as one block, so no field can straddle blocks and no option is needed
    big = "x" * (20 << 20)
    src = tmp_path / "big.csv"
    src.write_text(f'id,text\n1,a\n2,"{big}"\n3,c\n')
    rows = _read(CSV, ReadCsv(op="read_csv", path=str(src), split_bytes="4MiB"), src, None)
    assert [r["id"] for r in rows] == [1, 2, 3] and rows[1]["text"] == big


def test_resume_counts_the_rows_of_a_csv_part_holding_a_field_larger_than_a_block(tmp_path: Path) -> None:
    from connectors.files import filesystem
    from connectors.outputs import _count_rows

    part = tmp_path / "part-00000.csv"
    part.write_text(f'id,text\n1,"{"x" * (3 << 20)}"\n2,b\n')
    fs, path = filesystem(str(part))
    assert _count_rows(fs, path) == 2  # pyarrow's 1 MiB default block: "straddling object"
