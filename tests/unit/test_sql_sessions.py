"""The DuckDB sessions behind `sql` and `filter`: each task gets its own, and the databases a worker keeps
to make them cheap never carry one query's catalog or settings into another's (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from operators.batch import batch_fn
from operators.transforms import Filter, Sql

BATCH = pa.table({"x": [1, 2, 3]})


def _sql(query: str) -> Sql:
    return Sql(op="sql", input="input", query=query)


def test_a_macro_one_query_creates_is_not_seen_by_another_query() -> None:
    maker = batch_fn(_sql("CREATE OR REPLACE MACRO plus_one(v) AS v + 1; SELECT plus_one(x) AS y FROM batch"))
    assert maker(BATCH)["y"].to_pylist() == [2, 3, 4]
    user = batch_fn(_sql("SELECT plus_one(x) AS y FROM batch"))
    with pytest.raises(Exception, match="plus_one"):
        user(BATCH)


def test_a_setting_one_task_changes_is_not_seen_by_the_next_task_of_the_same_query() -> None:
    query = "SELECT current_setting('TimeZone') AS tz, x FROM batch"
    setter = batch_fn(_sql("SET TimeZone = 'America/Lima'; " + query))
    assert setter(BATCH)["tz"].to_pylist() == ["America/Lima"] * 3
    # another task (a new function from the same spec) of a query that reads the setting
    assert batch_fn(_sql(query))(BATCH)["tz"].to_pylist() != ["America/Lima"] * 3


def test_many_tasks_and_queries_keep_answering() -> None:
    for i in range(12):
        fn = batch_fn(Filter(op="filter", input="input", where=f"x > {i % 3}"))
        assert fn(BATCH)["x"].to_pylist() == [v for v in [1, 2, 3] if v > i % 3]
