"""A small headrace plugin for the tests: a source, a per-batch op, and an op registered without
behaviour. Installed for a test as a dist-info with a ``headrace.ops`` entry point on a temporary path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from connectors.readers import Split, serial_map
from connectors.sources import FileSource
from engine.spec.models import TransformSpec
from engine.spec.registry import register_op


class _NumbersReader:
    """One split per file; each line of a file is one number."""

    def splits(self, spec: Any, node: str, urls: list[str], pmap: Any = serial_map) -> list[Split]:
        return [Split(node, i, url, 0, 0) for i, url in enumerate(urls)]

    def read(self, spec: Any, split: Split, batch_rows: int, bad_row: Any = None) -> Iterator[pa.Table]:
        with open(split.url, encoding="utf-8") as fh:
            values = [int(line) for line in fh if line.strip()]
        yield pa.table({spec.column: pa.array(values, pa.int64())})


class DemoNumbers(FileSource):
    """Read files of one integer per line."""

    op: Literal["demo_numbers"] = Field(description="Read numbers, one per line.")
    column: str = Field("n", description="Name of the column.")


class DemoDouble(TransformSpec):
    """Double an integer column."""

    op: Literal["demo_double"] = Field(description="Double a column.")
    column: str = Field(description="The column to double.")


def _double(spec: DemoDouble) -> Any:
    def run(table: pa.Table) -> pa.Table:
        index = table.column_names.index(spec.column)
        return table.set_column(index, spec.column, pc.multiply(table[spec.column], 2))

    return run


class DemoUnrunnable(TransformSpec):
    """An op whose plugin forgot its behaviour."""

    op: Literal["demo_unrunnable"] = Field(description="Validates, cannot run.")


register_op(DemoNumbers, reader=_NumbersReader())
register_op(DemoDouble, batch=_double)
register_op(DemoUnrunnable)
