"""What the loopback server would bill a shape's run, computed directly: every row read, filtered and
rendered as a run renders it, and priced with the server's own usage rules (``tests.loopback.wire``,
with Anthropic's tool-use overhead billed).

No Ray and no HTTP: the unit tests compare estimates with this; the ``estimate`` family checks it
against a real run's bill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks.estimate_shapes import MODEL, Shape, answer
from operators.llm_rows import RowTask, Target
from operators.providers.claude import messages_body
from operators.providers.pricing import PriceTable
from tests.loopback import wire


def read_all(shape: Shape, path: Path) -> list[dict[str, Any]]:
    """Every row of the shape's input, in order (a folder's files in name order)."""
    files = sorted(p for p in path.iterdir()) if path.is_dir() else [path]
    if shape.source_op == "read_jsonl":
        return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    types = {"id": pa.int64(), "status": pa.string(), "text": pa.string()}
    options = pacsv.ConvertOptions(column_types=types)
    tables = [pacsv.read_csv(f, convert_options=options) for f in files]
    table = pa.concat_tables(tables)
    if shape.filter_where is not None:  # every shape's filter is status <> 'spam'
        table = table.filter(pc.not_equal(table["status"], "spam"))
    return table.to_pylist()


def bill(spec: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Calls, tokens and dollars of answering every row with the loopback server's usage rules."""
    task = RowTask(spec, {})
    target = Target("anthropic", MODEL)
    price = PriceTable().price("anthropic", MODEL)
    tokens_in = tokens_out = 0
    usd = 0.0
    for i, row in enumerate(rows):
        call = wire.parse_anthropic(messages_body(task.request(row, target)), tool_use_overhead=True)
        message = wire.anthropic_message(call, wire.resolve_answer(call, answer), f"msg_{i}")
        used_in, used_out = message["usage"]["input_tokens"], message["usage"]["output_tokens"]
        tokens_in, tokens_out = tokens_in + used_in, tokens_out + used_out
        usd += price.cost(used_in, used_out)
    return {"calls": len(rows), "input_tokens": tokens_in, "output_tokens": tokens_out, "usd": usd}
