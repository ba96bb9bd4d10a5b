"""A corpus of hostile inputs read by the sources themselves (no Ray): each is read whole, or its bad
rows are set aside (dead letters) with the split's other rows kept, or the read fails naming the file
and the place; data is never silently changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.readers import JSONL, Reader
from connectors.sources import ReadJsonl
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
