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


def die_once(table: pa.Table, marker_dir: str) -> pa.Table:
    """End the worker process itself the first time each batch is seen, as if its machine died."""
    import os

    marker = os.path.join(marker_dir, f"seen-{table['n'][0].as_py()}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return table


class DyingPoolWorker:
    """An LLM pool actor whose process dies under every batch (its node keeps being lost)."""

    def ready(self) -> tuple[int, str]:
        import os

        return os.getpid(), f"dying-{os.getpid()}"

    def process(self, batch: object, table: pa.Table, trace: object = None) -> object:
        import os

        os._exit(1)
