"""User functions for the multi-node tests."""

from __future__ import annotations

import pyarrow as pa
import ray


def tag_node(table: pa.Table) -> pa.Table:
    """Add the id of the cluster machine that ran this batch."""
    node = ray.get_runtime_context().get_node_id()
    return table.append_column("node_id", pa.array([node] * table.num_rows, pa.string()))


def tag_node_slowly(table: pa.Table, seconds: float = 0.5) -> pa.Table:
    """``tag_node`` after a pause, so a machine can be taken away while batches are in flight."""
    import time

    time.sleep(seconds)
    return tag_node(table)
