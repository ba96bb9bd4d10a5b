"""Progress counts an LLM node's rows as its batches come back, not only when a split ends (a one-split
LLM run showed 0 rows for its whole length)."""

from __future__ import annotations

import asyncio

from engine.runtime.llm.calls import LocalServices
from engine.runtime.llm.ledger import Ledger
from engine.runtime.progress import Progress
from engine.runtime.summary import NodeStats, RunSummary


def test_an_llm_nodes_rows_move_as_batches_come_back_before_its_split_ends() -> None:
    ledger = Ledger(None, {})
    services = LocalServices(ledger)
    for _ in range(3):  # three batches of 20 rows answered by the node's pool; the split still runs
        asyncio.run(services.record_rows("classify", 20))
    summary = RunSummary(
        "run-1",
        "p",
        "succeeded",
        0.0,
        {"input": NodeStats("read_csv"), "classify": NodeStats("llm_classify")},
    )
    summary.nodes["classify"].llm = ledger.usage()["classify"]  # what the driver's tick applies
    line = Progress(summary, enabled=False).line()
    assert "classify=60" in line, line
    summary.nodes["classify"].rows = 100  # the split ended: its exact figure wins
    assert "classify=100" in Progress(summary, enabled=False).line()
