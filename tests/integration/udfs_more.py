"""Row functions named by import path in the flat_map integration tests."""

from __future__ import annotations

from typing import Any


def split_words(row: dict[str, Any], sep: str = " ", min_len: int = 1) -> list[dict[str, Any]]:
    """One row per word of ``row['text']`` at least ``min_len`` long, with its position; none for no text."""
    words = [w for w in (row["text"] or "").split(sep) if len(w) >= min_len]
    return [{"id": row["id"], "word": w, "position": i} for i, w in enumerate(words)]


def ragged(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows with different keys: a row lacking a key holds null there."""
    if row["id"] % 2:
        return [{"id": row["id"]}, {"id": row["id"], "extra": "odd"}]
    return [{"id": row["id"], "even": True}]


def not_a_list(row: dict[str, Any]) -> dict[str, Any]:
    """Return a single dict instead of a list of rows."""
    return row


def words_or_fail(row: dict[str, Any]) -> list[dict[str, Any]]:
    """split_words, but row 13 raises, to test that an error policy isolates it."""
    if row["id"] == 13:
        raise ValueError("row 13 is cursed")
    return split_words(row)
