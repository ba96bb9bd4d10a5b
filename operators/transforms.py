"""Per-batch transforms over Arrow batches: SQL, filter, projection, renames, casts, user functions."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, JsonValue

from engine.spec.models import Columns, TransformSpec
from engine.spec.registry import register_op

ImportPath = str
_IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


@register_op
class Sql(TransformSpec):
    """Run a DuckDB SQL query over each batch, which the query names `batch`."""

    op: Literal["sql"] = Field(description="Run SQL (DuckDB) over each batch.")
    query: str = Field(
        min_length=1,
        description="A query over the table `batch`, e.g. `SELECT id, lower(body) AS body FROM batch`.",
    )

    def output_columns(self, inputs: object) -> Columns | None:
        return None  # known only once the query is bound against a schema


@register_op
class Filter(TransformSpec):
    """Keep the rows for which a SQL boolean expression holds."""

    op: Literal["filter"] = Field(description="Keep rows matching a SQL condition.")
    where: str = Field(min_length=1, description="A DuckDB boolean expression, e.g. `length(body) > 0`.")


@register_op
class Select(TransformSpec):
    """Keep only the named columns, in that order."""

    op: Literal["select"] = Field(description="Keep some columns.")
    columns: list[str] = Field(min_length=1, description="The columns to keep, in order.")

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        return None if known is None else {c: known.get(c, "any") for c in self.columns}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(c, ("columns", i)) for i, c in enumerate(self.columns)]


@register_op
class Rename(TransformSpec):
    """Rename columns."""

    op: Literal["rename"] = Field(description="Rename columns.")
    columns: dict[str, str] = Field(min_length=1, description="Old name -> new name.")

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        return None if known is None else {self.columns.get(k, k): v for k, v in known.items()}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(c, ("columns", c)) for c in self.columns]


@register_op
class Cast(TransformSpec):
    """Cast columns to Arrow types; a value that does not convert is a row error."""

    op: Literal["cast"] = Field(description="Change column types.")
    columns: dict[str, str] = Field(min_length=1, description="Column -> Arrow type, e.g. {n: int64}.")

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        return None if known is None else {**known, **self.columns}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(c, ("columns", c)) for c in self.columns]


@register_op
class MapBatches(TransformSpec):
    """Call a user function on each batch: Arrow record batch in, record batch (or table) out."""

    op: Literal["map_batches"] = Field(description="Apply a Python function to each batch.")
    fn: ImportPath = Field(
        pattern=_IMPORT_PATH,
        description="The function as an import path, `package.module:function`.",
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments passed to the function."
    )

    def output_columns(self, inputs: object) -> Columns | None:
        return None


@register_op
class Limit(TransformSpec):
    """Pass on only the first `n` rows of the stream."""

    per_batch: ClassVar[bool] = False

    op: Literal["limit"] = Field(description="Keep the first n rows.")
    n: int = Field(ge=0, description="How many rows to keep.")


def _first(inputs: object) -> Columns | None:
    if isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None:
        return inputs[0]
    return None
