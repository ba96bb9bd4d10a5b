"""Pure text helpers of the text transforms, kept apart from Arrow so they can be tested on their own."""

from __future__ import annotations

__all__ = ["chunk_spans"]

_SOFT_CUT_SHARE = 10
"""A chunk may end early at whitespace found in its last 1/_SOFT_CUT_SHARE (10%)."""


def chunk_spans(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Where to cut ``text`` into chunks: ``(start, end)`` character offsets, one pair per chunk.

    Every chunk holds at most ``chunk_chars`` characters and each chunk after the first starts exactly
    ``overlap_chars`` characters before the previous one ends, so ``text[s0:e0] + text[e0:e1] + ...``
    (each chunk with its first ``overlap_chars`` characters dropped, the first chunk whole) is ``text``
    again. A chunk that would cut a word prefers to end just after the last whitespace in its final
    10%, as long as the next chunk still moves forward; otherwise it ends at exactly ``chunk_chars``.
    An empty text has no chunks.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be at least 1, got {chunk_chars}")
    if not 0 <= overlap_chars < chunk_chars:
        raise ValueError(f"overlap_chars must be in [0, chunk_chars), got {overlap_chars} and {chunk_chars}")
    spans: list[tuple[int, int]] = []
    size = len(text)
    start = 0
    window = chunk_chars // _SOFT_CUT_SHARE
    while start < size:
        end = min(start + chunk_chars, size)
        if end < size and window and not text[end].isspace():
            end = _soft_end(text, end, window, start + overlap_chars)
        spans.append((start, end))
        if end == size:
            break
        start = end - overlap_chars
    return spans


def _soft_end(text: str, end: int, window: int, floor: int) -> int:
    """Just after the last whitespace in ``text[end - window:end]``, if that lies beyond ``floor``."""
    for i in range(end - 1, end - window - 1, -1):
        if text[i].isspace():
            return i + 1 if i + 1 > floor else end
    return end
