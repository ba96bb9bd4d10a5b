"""User functions for the multi-node tests."""

from __future__ import annotations

import pyarrow as pa
import ray


def tag_node(table: pa.Table) -> pa.Table:
    """Add the id of the cluster machine that ran this batch."""
    node = ray.get_runtime_context().get_node_id()
    return table.append_column("node_id", pa.array([node] * table.num_rows, pa.string()))
