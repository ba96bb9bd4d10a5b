"""Realistic run records built event by event, for the run report's tests and its README screenshot.

``dataflow_run`` is a ticket-triage dataflow (read_csv → sql → llm_classify → write_parquet, with a
branch to an aggregate after a barrier) whose splits ran two at a time: one split retried after a 429,
two rows went to the dead-letter file, the LLM ledger was read after every batch, and the aggregate
failed, so the run ended ``failed``. ``graph_run`` is a state graph with a review loop.
"""

from __future__ import annotations

from typing import Any

from engine.records import Event

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
PIPELINE_FILE = "configs/examples/ticket-triage.yaml"
SPLIT_BYTES = 4_194_304
DATAFLOW_NODES = {
    "tickets": {"op": "read_csv", "line": 14, "col": 3, "inputs": []},
    "normalise": {"op": "sql", "line": 18, "col": 3, "inputs": ["tickets"]},
    "triage": {"op": "llm_classify", "line": 25, "col": 3, "inputs": ["normalise"]},
    "output": {"op": "write_parquet", "line": 33, "col": 3, "inputs": ["triage"]},
    "by_team": {"op": "aggregate", "line": 38, "col": 3, "inputs": ["triage"]},
    "team_counts": {"op": "write_csv", "line": 44, "col": 3, "inputs": ["by_team"]},
}
SPLITS = 8
ROWS_PER_SPLIT = 5_000


class _Log:
    """Numbers events of one run in order."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[Event] = []

    def add(self, at: float, kind: str, node: str | None = None, /, **data: Any) -> None:
        self.events.append(Event(self.run_id, len(self.events), T0 + at, kind, node, data))


def dataflow_run(
    run_id: str = "r-20260101-000000-7f3a", *, names: dict[str, str] | None = None
) -> list[Event]:
    """The ticket-triage run's events; ``names`` renames nodes (to put hostile strings in them)."""
    rename = names or {}

    def n(name: str) -> str:
        return rename.get(name, name)

    nodes = {
        n(name): {**info, "inputs": [n(i) for i in info["inputs"]]} for name, info in DATAFLOW_NODES.items()
    }
    log = _Log(run_id)
    log.add(
        0.0,
        "run_started",
        pipeline="ticket-triage",
        pipeline_file=PIPELINE_FILE,
        pipeline_hash="9c1e5a0b",
        tenant="support",
        kind="dataflow",
        resume_of=None,
        nodes=nodes,
        edges=[[src, name] for name, info in nodes.items() for src in info["inputs"]],
        inputs=["data/tickets.csv"],
        outputs={n("output"): "out/triage/", n("team_counts"): "out/team_counts.csv"},
    )
    for name in ("tickets", "normalise", "triage", "output"):
        log.add(0.4, "node_started", n(name))
    cost = 0.0
    tokens = [0, 0]
    requests = 0
    totals = {name: [0, 0, 0.0] for name in ("tickets", "normalise", "triage", "output")}  # in, out, s
    for split in range(SPLITS):
        began = 0.5 + (split // 2) * 3.1 + (split % 2) * 0.4
        if split == 3:
            log.add(
                began + 1.2,
                "retry",
                n("triage"),
                split=3,
                attempt=1,
                max_attempts=3,
                delay_s=1.0,
                error="RateLimitError: 429 Too Many Requests (retry-after 1 s)",
            )
            began += 2.2
        took = 2.6 + (split % 3) * 0.15
        failed = 2 if split == 5 else 0
        rows = {
            "tickets": ROWS_PER_SPLIT,
            "normalise": ROWS_PER_SPLIT - 40,
            "triage": ROWS_PER_SPLIT - 40 - failed,
            "output": ROWS_PER_SPLIT - 40 - failed,
        }
        rows_in = {"tickets": 0, "normalise": ROWS_PER_SPLIT, "triage": ROWS_PER_SPLIT - 40}
        rows_in["output"] = rows["triage"]
        seconds = {"tickets": 0.21, "normalise": 0.09, "triage": took - 0.45, "output": 0.15}
        for name in totals:
            totals[name][0] += rows_in[name]
            totals[name][1] += rows[name]
            totals[name][2] += seconds[name]
        if failed:
            log.add(
                began + took - 0.3,
                "error",
                n("triage"),
                code="llm_bad_answer",
                message="the model answered 'urgent', which is not one of the labels "
                "[bug, billing, account, feature, other]",
                location={"file": PIPELINE_FILE, "line": 25, "col": 3},
                input={
                    "url": "data/tickets.csv",
                    "split": split,
                    "start": split * SPLIT_BYTES,
                    "end": (split + 1) * SPLIT_BYTES,
                    "row": 2_811,
                },
                hint="add the label, or say in the prompt that only these labels are allowed",
            )
            log.add(
                began + took - 0.2, "dead_letter", n("triage"), file="out/_dead_letters/triage.jsonl", rows=2
            )
        log.add(
            began + took,
            "batch_committed",
            n("output"),
            split=split,
            input="data/tickets.csv",
            start=split * SPLIT_BYTES,
            end=(split + 1) * SPLIT_BYTES,
            rows={n(k): v for k, v in rows.items()},
            rows_in={n(k): v for k, v in rows_in.items()},
            seconds={n(k): v for k, v in seconds.items()},
            failed={n("triage"): failed} if failed else {},
            began=T0 + began,
            ended=T0 + began + took,
            part=f"part-{split:05d}.parquet",
        )
        requests += rows["triage"] // 20
        tokens[0] += rows["triage"] * 61
        tokens[1] += rows["triage"] * 3
        cost = (tokens[0] * 0.8 + tokens[1] * 4.0) / 1e6
        log.add(
            began + took + 0.05,
            "budget",
            n("triage"),
            requests=requests,
            cached_requests=split * 3,
            failed_requests=1 if split == 3 else 0,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cost_usd=round(cost, 6),
        )
    end = 0.5 + (SPLITS // 2) * 3.1 + 2.2 + 1.0
    for name, (rows_in_total, rows_total, secs) in totals.items():
        log.add(
            end,
            "node_finished",
            n(name),
            rows_in=rows_in_total,
            rows=rows_total,
            failed=2 if name == "triage" else 0,
            seconds=round(secs, 3),
            tokens=sum(tokens) if name == "triage" else 0,
            cost_usd=round(cost, 6) if name == "triage" else 0.0,
        )
    log.add(end + 0.1, "node_started", n("by_team"))
    log.add(
        end + 0.9,
        "error",
        n("by_team"),
        code="type_error",
        message="sum(body_chars) needs numbers, but column 'body_chars' is string",
        location={"file": PIPELINE_FILE, "line": 40, "col": 9},
        input={"url": None, "split": None, "start": None, "end": None, "row": None},
        hint="cast body_chars to int64 in 'normalise' (CAST(length(body) AS BIGINT))",
    )
    log.add(
        end + 1.0,
        "run_finished",
        status="failed",
        seconds=end + 1.0,
        error="node 'by_team' failed: sum(body_chars) needs numbers, but column 'body_chars' is string",
        outputs={n("output"): "out/triage/"},
        dead_letters=["out/_dead_letters/triage.jsonl"],
        cost_usd=round(cost, 6),
        tokens=sum(tokens),
    )
    return log.events


GRAPH_STEPS = [
    ("plan", 1.2),
    ("research", 3.4),
    ("write", 2.1),
    ("review", 0.8),
    ("research", 2.2),
    ("write", 1.9),
    ("review", 0.7),
]


def graph_run(run_id: str = "g-20260101-010000-c0de") -> list[Event]:
    """A state graph (plan → research → write → review, review looping back to research)."""
    log = _Log(run_id)
    nodes = {
        "plan": {"op": "state", "line": 12, "col": 3, "inputs": []},
        "research": {"op": "state", "line": 16, "col": 3, "inputs": ["plan"]},
        "write": {"op": "state", "line": 21, "col": 3, "inputs": ["research"]},
        "review": {"op": "state", "line": 26, "col": 3, "inputs": ["write"]},
    }
    edges = [
        ["__start__", "plan"],
        ["plan", "research"],
        ["research", "write"],
        ["write", "review"],
        ["review", "research"],
        ["review", "__end__"],
    ]
    log.add(
        0.0,
        "run_started",
        pipeline="report-writer",
        pipeline_file="configs/templates/state-graph.yaml",
        tenant="default",
        kind="graph",
        nodes=nodes,
        edges=edges,
        inputs=[],
        outputs={},
    )
    at = 0.2
    for step, (node, seconds) in enumerate(GRAPH_STEPS, start=1):
        log.add(at, "node_started", node, step=step)
        at += seconds
        log.add(at, "node_finished", node, step=step, seconds=seconds)
        log.add(at + 0.01, "checkpoint", node, step=step, seconds=seconds + 0.01)
        at += 0.05
    log.add(
        at,
        "run_finished",
        status="succeeded",
        seconds=at,
        error=None,
        outputs={},
        dead_letters=[],
        cost_usd=0.0,
        tokens=0,
    )
    return log.events
