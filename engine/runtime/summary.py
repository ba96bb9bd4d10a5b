"""The summary of a run: what ``headrace run`` prints and what ``--json`` emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["succeeded", "failed", "budget_exceeded", "cancelled"]

_EXIT = {"succeeded": 0, "failed": 3, "budget_exceeded": 4, "cancelled": 130}


@dataclass
class NodeStats:
    """Counters of one node over a run."""

    op: str
    rows: int = 0
    seconds: float = 0.0
    rows_in: int = 0
    failed: int = 0
    bytes_read: int = 0
    """Input bytes a source node read (zero for other nodes)."""
    tokens: int = 0
    cost_usd: float = 0.0
    llm: dict[str, Any] | None = None
    """An LLM node's usage from the run's ledger: requests (billed, cached, failed), tokens billed and
    cached, cost, and the rows answered so far (counted per batch)."""

    @property
    def rows_so_far(self) -> int:
        """Rows out of the node while the run goes on: ``rows`` grows when a split ends, an LLM node's
        answered rows as each batch comes back from its pool (a one-split run would show 0 until its end)."""
        return max(self.rows, int((self.llm or {}).get("rows", 0)))


@dataclass
class RunSummary:
    """The outcome of a run."""

    run_id: str
    pipeline: str
    status: RunStatus
    seconds: float
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    dead_letters: list[str] = field(default_factory=list)
    retries: int = 0
    exit_status: int | None = None
    """The process exit status when it is not the status's own: 70 after an internal error (a bug),
    143 for a run stopped by SIGTERM."""

    @property
    def exit_code(self) -> int:
        """The process exit status for this outcome."""
        return self.exit_status if self.exit_status is not None else _EXIT[self.status]

    @property
    def total_cost_usd(self) -> float:
        """Spend over every node."""
        return sum(n.cost_usd for n in self.nodes.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON object ``headrace run --json`` prints."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "nodes": {
                name: {
                    "op": s.op,
                    "rows": s.rows,
                    "failed_rows": s.failed,
                    "seconds": round(s.seconds, 3),
                    "bytes_read": s.bytes_read,
                    "tokens": s.tokens,
                    "cost_usd": s.cost_usd,
                    **({"llm": s.llm} if s.llm is not None else {}),
                }
                for name, s in self.nodes.items()
            },
            "total_tokens": sum(s.tokens for s in self.nodes.values()),
            "total_cost_usd": self.total_cost_usd,
            "outputs": self.outputs,
            "dead_letters": sorted(self.dead_letters),
            "retries": self.retries,
            "error": self.error,
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        """A short table for people."""
        lines = [f"run {self.run_id} ({self.pipeline}): {self.status} in {self.seconds:.2f}s"]
        width = max([len(n) for n in self.nodes] + [4])
        lines.append(f"  {'node':<{width}}  {'op':<14} {'rows':>12} {'seconds':>9} {'rows/s':>12}")
        for name, s in self.nodes.items():
            rate = f"{s.rows / s.seconds:,.0f}" if s.seconds > 0 else "-"
            lines.append(f"  {name:<{width}}  {s.op:<14} {s.rows:>12,} {s.seconds:>9.2f} {rate:>12}")
        for name, s in self.nodes.items():
            if s.llm is not None:
                u = s.llm
                lines.append(
                    f"  llm {name}: {u['requests']:,} calls answered, {u['cached_requests']:,} from the "
                    f"cache, {u['failed_requests']:,} failed attempts; tokens in {u['input_tokens']:,} out "
                    f"{u['output_tokens']:,} (cached in {u['cached_input_tokens']:,} out "
                    f"{u['cached_output_tokens']:,}); cost ${u['cost_usd']:.4f}"
                )
        if any(s.llm is not None for s in self.nodes.values()):
            lines.append(f"  total cost: ${self.total_cost_usd:.4f}")
        for node, url in self.outputs.items():
            lines.append(f"  output {node}: {url}")
        failed = {n: s.failed for n, s in self.nodes.items() if s.failed}
        if failed:
            lines.append("  failed rows: " + ", ".join(f"{n}={c:,}" for n, c in failed.items()))
        if self.retries:
            lines.append(f"  retried splits: {self.retries}")
        for path in sorted(self.dead_letters):
            lines.append(f"  dead letters: {path}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
