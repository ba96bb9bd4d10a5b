"""Progress of a run: a live table on a terminal, a plain line every few seconds otherwise (stderr)."""

from __future__ import annotations

import sys
import time
from typing import Any

from engine.runtime.summary import RunSummary


class Progress:
    """Tracks splits and bytes done; renders rows and rows/s per node, MB/s and an ETA."""

    def __init__(self, summary: RunSummary, *, enabled: bool, interval_s: float = 5.0) -> None:
        self.summary = summary
        self.enabled = enabled
        self.interval_s = interval_s
        self.total_splits = 0
        self.total_bytes = 0
        self.skipped_splits = 0
        self.done_splits = 0
        self.bytes = 0
        self.started = time.perf_counter()
        self.last_line = 0.0
        self.live: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self.live.start()

    def split_done(self, nbytes: int) -> None:
        """A split was read to its end."""
        self.done_splits += 1
        self.bytes += nbytes

    def eta_s(self) -> float | None:
        """Seconds left at the current rate, when the input size is known."""
        elapsed = time.perf_counter() - self.started
        if not self.total_bytes or not self.bytes or elapsed <= 0:
            return None
        return max(0.0, (self.total_bytes - self.bytes) / (self.bytes / elapsed))

    def line(self) -> str:
        """One plain line: elapsed, splits, MB/s, ETA and rows per node."""
        elapsed = time.perf_counter() - self.started
        rate = self.bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        eta = self.eta_s()
        rows = " ".join(f"{n}={s.rows_so_far:,}" for n, s in self.summary.nodes.items())
        left = f" eta {eta:.0f}s" if eta is not None else ""
        done = f"splits {self.done_splits}/{self.total_splits}"
        spend = "".join(
            f" {n}: {s.tokens:,} tokens ${s.cost_usd:.4f}" for n, s in self.summary.nodes.items() if s.llm
        )
        return f"[{elapsed:6.1f}s] {done} {rate:.1f} MB/s{left}  rows: {rows}{spend and '  llm:' + spend}"

    def _table(self) -> Any:
        from rich.table import Table

        elapsed = max(time.perf_counter() - self.started, 1e-9)
        title = self.line().split("  rows:")[0] + f"  cost ${self.summary.total_cost_usd:.4f}"
        table = Table(title=title, title_justify="left", box=None)
        for column in ("node", "op", "rows", "rows/s", "failed", "tokens", "cached", "cost"):
            table.add_column(column, justify="left" if column in ("node", "op") else "right")
        for name, s in self.summary.nodes.items():
            llm = s.llm or {}
            table.add_row(
                name,
                s.op,
                f"{s.rows_so_far:,}",
                f"{s.rows_so_far / elapsed:,.0f}",
                f"{s.failed:,}" if s.failed else "",
                f"{s.tokens:,}" if llm else "",
                f"{llm['cached_requests']:,}" if llm else "",
                f"${s.cost_usd:.4f}" if llm else "",
            )
        return table

    def tick(self) -> None:
        """Refresh the display (rate-limited for plain lines)."""
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self._table())
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the live display."""
        if self.live is not None:
            self.live.stop()
