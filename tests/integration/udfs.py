"""User functions named by import path in integration-test pipelines."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc


def double_n(table: pa.Table, factor: int = 2) -> pa.Table:
    """Multiply column ``n`` by ``factor``."""
    return table.set_column(table.column_names.index("n"), "n", pc.multiply(table["n"], factor))


def explode_on_seven(table: pa.Table) -> pa.Table:
    """Fail on a row whose ``n`` is 7, to test failure reporting."""
    if pc.any(pc.equal(table["n"], 7)).as_py():
        raise ValueError("n must not be 7")
    return table


def not_a_table(table: pa.Table) -> object:
    """Return something that is not a table."""
    return [1, 2, 3]


def slow(table: pa.Table, seconds: float = 0.2) -> pa.Table:
    """Pass rows through after a pause, so a run lasts long enough to be killed mid-way."""
    import time

    time.sleep(seconds)
    return table


def flaky_io(table: pa.Table, marker_dir: str, always: bool = False) -> pa.Table:
    """Fail with an OSError the first time each batch is seen (or every time), like a flaky disk."""
    import os

    marker = os.path.join(marker_dir, f"seen-{table['n'][0].as_py()}")
    if always or not os.path.exists(marker):
        open(marker, "w").close()
        raise OSError("simulated I/O hiccup")
    return table


def fail_on_id_seven(table: pa.Table) -> pa.Table:
    """Fail on the batch holding id 7, to test failures upstream of a barrier."""
    if 7 in table.column("id").to_pylist():
        raise ValueError("id 7 is not allowed")
    return table


def hold_while(table: pa.Table, marker: str, from_id: int) -> pa.Table:
    """Wait while the file ``marker`` exists, for batches whose ids start at ``from_id`` or later."""
    ids = [int(v) for v in table.column("id").to_pylist()]
    deadline = time.monotonic() + 120
    while ids and min(ids) >= from_id and os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return table


def hold_cpu(table: pa.Table, seconds: float, log: str, tag: str) -> pa.Table:
    """Hold the task's CPU for ``seconds`` and append ``[tag, start, end, pid]`` to ``log`` (JSON lines),
    so a test can tell how many of a tenant's tasks ran at the same moment; ``tag`` is also appended to
    ``log.started`` as the task begins. Sleeping is enough: Ray's CPU accounting is logical, and it
    spares the machine's real cores."""
    import json

    start = time.time()
    with open(log + ".started", "a", encoding="utf-8") as fh:
        fh.write(tag + "\n")
    time.sleep(seconds)
    end = time.time()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps([tag, start, end, os.getpid()]) + "\n")
    return table
