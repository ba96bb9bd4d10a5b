"""Text cells of a CSV source checked as UTF-8, so an invalid byte never changes data silently.

Left to itself, pyarrow infers a column holding one invalid UTF-8 cell as binary, and every cell of it,
valid ones included, is then written as ``b'...'``. The CSV reader declares its text columns as strings
(pyarrow validates them as it converts); when a range holds a cell that is not UTF-8, it parses that
range again with the text columns as bytes, and :func:`decode_text_columns` turns them into strings
batch by batch, following the source's ``encoding_errors`` policy cell by cell:

- ``on_error``: the row is a malformed row (dead-lettered or skipped under the node's ``on_error``),
  or, without one, the read fails naming the file, the byte offset, the row and the column;
- ``fail``: the read fails so, whatever ``on_error`` says;
- ``replace``: each invalid byte becomes U+FFFD; the other cells are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import pyarrow as pa

EncodingErrors = Literal["on_error", "fail", "replace"]

BadRowHandler = Callable[[str, dict[str, Any]], None]
Locate = Callable[[], int | None]
"""The file offset of the first invalid byte of the read (None when it cannot be told)."""


_HINTS = {
    "on_error": "fix the file's encoding, set the source's `encoding_errors: replace` to read such bytes as "
    "U+FFFD, or give it `on_error: {mode: dead_letter, dead_letter_path: ...}` to set such rows aside",
    "fail": "the source's `encoding_errors: fail` stops here whatever `on_error` says; fix the file's "
    "encoding, or set `encoding_errors: replace` (U+FFFD) or `on_error` (its dead letters or skips)",
}


class InvalidText(ValueError):
    """A text cell is not valid UTF-8 and the policy is to fail; the reader adds file and node."""


def decode_text_columns(
    tables: Iterator[pa.Table],
    columns: list[str],
    policy: EncodingErrors,
    bad_row: BadRowHandler | None,
    locate: Locate,
) -> Iterator[pa.Table]:
    """``tables`` with ``columns`` (binary) turned into strings under ``policy``; see the module doc."""
    seen = 0  # rows of the read before the current table, to name a row
    for table in tables:
        yield _decode(table, columns, policy, bad_row if policy == "on_error" else None, locate, seen)
        seen += table.num_rows


def _decode(
    table: pa.Table,
    columns: list[str],
    policy: EncodingErrors,
    bad_row: BadRowHandler | None,
    locate: Locate,
    seen: int,
) -> pa.Table:
    decoded: dict[str, pa.ChunkedArray | pa.Array] = {}
    bad: dict[int, str] = {}  # row -> the first problem found in it
    for name in columns:
        if name not in table.column_names:
            continue
        column = table.column(name)
        try:
            decoded[name] = column.cast(pa.string())
            continue
        except pa.ArrowInvalid:
            pass  # some cell is not UTF-8: find which, cell by cell
        cells: list[str | None] = []
        for row, cell in enumerate(column.to_pylist()):
            try:
                cells.append(None if cell is None else cell.decode("utf-8"))
            except UnicodeDecodeError as exc:
                if policy == "replace":
                    cells.append(cell.decode("utf-8", errors="replace"))
                    continue
                invalid = cell[exc.start : exc.end]
                problem = f"column '{name}': invalid UTF-8 {invalid!r} at byte {exc.start} of the cell"
                if bad_row is None:
                    at = locate()
                    where = f"byte {at}, " if at is not None else ""
                    raise InvalidText(
                        f"{where}row {seen + row + 1} of the split: {problem}; {_HINTS[policy]}"
                    ) from None
                bad.setdefault(row, f"row {seen + row + 1} of the split: {problem}")
                cells.append(None)
        decoded[name] = pa.array(cells, pa.string())
    out = table
    for name, column in decoded.items():
        out = out.set_column(out.schema.get_field_index(name), name, column)
    if not bad or bad_row is None:
        return out
    for row, problem in sorted(bad.items()):
        shown = {
            k: v.decode("utf-8", errors="backslashreplace") if isinstance(v, bytes) else v
            for k, v in table.slice(row, 1).to_pylist()[0].items()
        }
        bad_row(problem, {"row": shown})
    keep = [row for row in range(out.num_rows) if row not in bad]
    return out.take(pa.array(keep, pa.int64()))
