"""The quote state of CSV bytes, as pyarrow's parser sees it, found without parsing.

pyarrow's parser is laxer than RFC 4180: a quote opens a quoted field only at the start of a field;
inside one, a doubled quote is a literal quote and any other quote closes it; after the closing
quote, and anywhere in an unquoted field, quotes are literal (`5" screen`). So quotes are taken in
runs of consecutive quote bytes. A run of even length never changes the state. A run of odd length
right after a field start (a delimiter, CR, LF or the start of the file) flips it: it opens a
field, or closes one whose text ended with a delimiter or newline. A run of odd length anywhere else
leaves the state *outside* quotes whatever it was: it closes a quoted field, or is literal text in
an unquoted one.

Those last runs make splitting cheap: after the last such run before an offset, the state there
follows from the bytes in between alone. Every closing quote of a field whose text ends in an
ordinary character is one, so in a CSV with quoted fields the state at an offset is found from the
few KiB before it (`csv_local_quote_state`). When it cannot be (a file without quotes, or a quoted
field longer than the look-back), each byte range of the file is scanned for its effect on the state
(`csv_quote_effect`, independent per range, so in parallel) and the effects are composed in order
(`range_quote_states`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

if TYPE_CHECKING:
    from connectors.splits import ByteRange

__all__ = [
    "FLIP",
    "KEEP",
    "LOOK_BACK_BYTES",
    "SET_IN",
    "SET_OUT",
    "QuoteEffect",
    "RunScan",
    "apply_effect",
    "csv_local_quote_state",
    "csv_quote_effect",
    "quote_byte",
    "range_quote_states",
    "then",
]

QuoteEffect = int
"""What a stretch of CSV does to the quote state: :data:`KEEP` it, :data:`FLIP` it, or leave it
:data:`SET_OUT` (outside quotes) or :data:`SET_IN` whatever it was."""
KEEP, FLIP, SET_OUT, SET_IN = 0, 1, 2, 3

LOOK_BACK_BYTES = 256 * 1024
"""How far before an offset `csv_local_quote_state` looks for a run that fixes the state."""

# File reads of a range scan: large enough that per-call overhead (and remote round trips) vanish.
_READ_BYTES = 4 * 1024 * 1024
# A run still open at the end of a scan is read on in steps of this many bytes (it is rarely long).
_RUN_READ_BYTES = 64 * 1024
# Scans take this many bytes at a time, so their temporaries (8 bytes per quote) stay small.
_SCAN_BYTES = 1024 * 1024


def quote_byte(quote_char: str) -> bytes:
    """`quote_char` as the single byte the scans look for."""
    quote = quote_char.encode("utf-8")
    if len(quote) != 1 or quote == b"\n":
        raise ValueError(f"quote_char must be one byte, not a newline: {quote!r}")
    return quote


def apply_effect(effect: QuoteEffect, inside: bool) -> bool:
    """The quote state after a stretch with ``effect``, entered with state ``inside``."""
    return bool(effect & 1) if effect >= SET_OUT else inside ^ bool(effect)


def then(first: QuoteEffect, second: QuoteEffect) -> QuoteEffect:
    """The effect of a stretch with effect ``first`` followed by one with effect ``second``."""
    if second >= SET_OUT:
        return second
    return first ^ second  # KEEP/FLIP flip the state or the value set: both are the low bit


def range_quote_states(effects: Sequence[QuoteEffect]) -> list[bool]:
    """Quote state at the start of each range of one file, from the ranges' `csv_quote_effect`."""
    states: list[bool] = []
    inside = False
    for effect in effects:
        states.append(inside)
        inside = apply_effect(effect, inside)
    return states


def csv_quote_effect(
    fs: fsspec.AbstractFileSystem, r: ByteRange, quote_char: str = '"', delimiter: str = ","
) -> QuoteEffect:
    """The effect on the quote state of the quote runs that start in [r.start, r.end).

    A run that starts before r.start belongs to the range before; one that starts before r.end and
    goes on past it belongs to this range (the read goes on to its end). Independent per range, so
    the runtime can scan every range of a file in parallel and compose them (`range_quote_states`).
    Reads the range once, through one reused buffer.
    """
    remaining = r.end - r.start
    with fs.open(r.path, "rb") as f, memoryview(bytearray(min(_READ_BYTES, max(remaining, 1)))) as view:
        scan = RunScan.at(f, r.start, quote_byte(quote_char), delimiter)
        while remaining > 0:
            n = f.readinto(view[: min(len(view), remaining)])
            if not n:
                break
            scan.feed(np.frombuffer(view, np.uint8, n))
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
    run that leaves the state outside quotes whatever it was (see the module's notes), or reach the
    start of the file. A run that starts before ``offset`` and goes on past it counts whole, as
    `csv_quote_effect` counts it.
    """
    quote = quote_byte(quote_char)
    if offset <= 0:
        return False
    begin = max(0, offset - (LOOK_BACK_BYTES if look_back is None else look_back))
    with fs.open(path, "rb") as f:
        # a run going on across `begin` started before the window: its length is unknown, skip it
        scan = RunScan.at(f, begin, quote, delimiter)
        scan.feed(np.frombuffer(f.read(offset - begin), np.uint8))
        scan.finish_from(f)
    if begin == 0 or scan.effect >= SET_OUT:
        return apply_effect(scan.effect, False)
    return None


class RunScan:
    """Folds the quote runs of consecutive chunks of CSV bytes into their effect on the state."""

    def __init__(self, quote: bytes, delimiter: str) -> None:
        self.quote = quote[0]
        self.field_start = np.zeros(256, bool)
        """Whether a quote after this byte is at a field's start: a delimiter, CR or LF."""
        self.field_start[[delimiter.encode("utf-8")[0], ord("\r"), ord("\n")]] = True
        self.effect: QuoteEffect = KEEP
        self.prev = -1
        """The byte before the next chunk (-1: the start of the file, a field start)."""
        self.open_run: tuple[bool, int] | None = None
        """A run reaching the end of the last chunk: whether a field start precedes it, its length."""
        self.skipping = False
        """Leading quotes belong to a run that started before the scan: skip them."""

    @classmethod
    def at(cls, f: Any, offset: int, quote: bytes, delimiter: str) -> RunScan:
        """A scan of `f`'s bytes from `offset` on, `f` left there. The byte before `offset` is the
        scan's context; a quote run going on across `offset` belongs to what comes before it and is
        skipped."""
        scan = cls(quote, delimiter)
        if offset > 0:
            f.seek(offset - 1)
            before = f.read(1)
            scan.prev = before[0] if before else -1
            scan.skipping = before == quote
        else:
            f.seek(0)
        return scan

    def feed(self, values: np.ndarray) -> None:
        """Take the next bytes."""
        for at in range(0, len(values), _SCAN_BYTES):
            self._feed(values[at : at + _SCAN_BYTES])

    def finish_from(self, f: Any) -> bytes:
        """End the scan at `f`'s position: a run still open goes on through the quotes that follow,
        read from `f` (left just after them). Returns those quotes."""
        taken = b""
        while self.open_run is not None and (more := f.read(_RUN_READ_BYTES)):
            rest = more.lstrip(bytes([self.quote]))
            run = more[: len(more) - len(rest)]
            self._feed(np.frombuffer(run, np.uint8))
            taken += run
            if rest:
                f.seek(f.tell() - len(rest))
                break
        self._end_run()  # the bytes ended with the run
        return taken

    def _starts_field(self, byte: int) -> bool:
        return byte < 0 or bool(self.field_start[byte])

    def _feed(self, values: np.ndarray) -> None:
        n = len(values)
        if not n:
            return
        # Work on the quotes' positions: two passes over the bytes, then arrays as long as the quotes.
        at = np.flatnonzero(values == self.quote)
        if not len(at):
            self._end_run()
            self.prev = int(values[-1])
            return
        # each run of consecutive quotes is [start, end)
        breaks = np.flatnonzero(np.diff(at) != 1) + 1
        starts = at[np.concatenate(([0], breaks))]
        ends = at[np.concatenate((breaks - 1, [len(at) - 1]))] + 1
        if starts[0] == 0 and (self.skipping or self.open_run is not None):
            # the chunk opens with the rest of a run that began before it
            lead = int(ends[0])
            if self.open_run is not None:
                self.open_run = (self.open_run[0], self.open_run[1] + lead)
            if lead == n:
                self.prev = self.quote
                return
            starts, ends = starts[1:], ends[1:]
        self._end_run()
        if len(starts) and ends[-1] == n:
            before = int(values[starts[-1] - 1]) if starts[-1] else self.prev
            self.open_run = (self._starts_field(before), int(n - starts[-1]))
            starts, ends = starts[:-1], ends[:-1]
        if len(starts):
            at_field = self.field_start[values[np.maximum(starts - 1, 0)]]
            if starts[0] == 0:
                at_field[0] = self._starts_field(self.prev)
            odd = ((ends - starts) & 1).astype(bool)
            self._fold(odd & at_field, odd & ~at_field)
        self.prev = int(values[-1])

    def _end_run(self) -> None:
        """A byte other than a quote came (or the bytes ended): a run still open has its length."""
        self.skipping = False
        if self.open_run is not None:
            self._close(*self.open_run)
            self.open_run = None

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
