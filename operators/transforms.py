"""Per-batch transforms over Arrow batches: SQL, filter, projection, renames, casts, user functions,
row expansion (flat_map, explode, chunk_text) and deterministic sampling."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, JsonValue, ValidationInfo, field_validator, model_validator

from engine.spec.models import ColumnKind, Columns, ImportPath, TransformSpec
from engine.spec.registry import register_op


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

    def arrow_types(self) -> dict[tuple[str | int, ...], str]:
        return {("columns", c): t for c, t in self.columns.items()}


@register_op
class MapBatches(TransformSpec):
    """Call a user function on each batch: Arrow record batch in, record batch (or table) out."""

    op: Literal["map_batches"] = Field(description="Apply a Python function to each batch.")
    fn: ImportPath = Field(
        description="The function as an import path, `package.module:function`.",
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments passed to the function."
    )

    def output_columns(self, inputs: object) -> Columns | None:
        return None


@register_op
class FlatMap(TransformSpec):
    """Call a user function on each row; the rows it returns (zero, one or many) replace that row."""

    op: Literal["flat_map"] = Field(
        description="Turn each row into zero, one or many rows with a Python function."
    )
    fn: ImportPath = Field(
        description="The function as an import path, `package.module:function`. It is called as "
        "`fn(row, **kwargs)` with one row as a dict (column -> value) and returns a list of dicts, each "
        "an output row. A batch's columns are every key its rows hold, in order of first appearance, "
        "and a row without a key holds null there; return the same keys, with values of one type, for "
        "every row so that every batch has the same columns.",
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments passed to the function after the row."
    )

    def output_columns(self, inputs: object) -> Columns | None:
        return None  # whatever the function returns


@register_op
class Explode(TransformSpec):
    """Give each element of a list column its own row, repeating the other columns."""

    op: Literal["explode"] = Field(description="Turn each element of a list column into its own row.")
    column: str = Field(
        min_length=1,
        description="A list-typed column. Each element becomes a row holding that element in this "
        "column and the row's other columns repeated; a row whose list is empty or null is dropped.",
    )

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        if known is None:
            return None
        return {k: _item_type(v) if k == self.column else v for k, v in known.items()}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(self.column, ("column",))]

    def column_kinds(self) -> dict[tuple[str | int, ...], ColumnKind]:
        return {("column",): "list"}


@register_op
class Sample(TransformSpec):
    """Keep a deterministic share of rows, chosen by a hash of each row's values and a seed.

    Rows are hashed with DuckDB's `hash` of their typed values, so the same value read as another type
    (`1` as int64 or as double) may be chosen differently, and another DuckDB version may choose other
    rows.
    """

    op: Literal["sample"] = Field(description="Keep a random-looking but reproducible share of rows.")
    fraction: float = Field(
        gt=0,
        le=1,
        description="The probability that a row is kept (0 < fraction <= 1). Whether a row is kept "
        "depends only on its values and `seed`, never on batch size, file splits or worker count, so "
        "a rerun keeps the same rows; identical rows are kept or dropped together.",
    )
    seed: int = Field(0, description="Chooses a different, equally reproducible sample.")


@register_op
class ChunkText(TransformSpec):
    """Split a text column into overlapping chunks: one output row per chunk."""

    op: Literal["chunk_text"] = Field(description="Split long text into overlapping chunks, one row each.")
    column: str = Field(
        min_length=1,
        description="The string column to split. A row whose text is null or empty gives no rows; the "
        "other columns are repeated on every chunk's row.",
    )
    chunk_chars: int = Field(
        2000,
        ge=1,
        description="The most characters (Unicode code points) in one chunk. A chunk that would end "
        "inside a word ends "
        "instead just after the last whitespace in its final 10%, when there is one.",
    )
    overlap_chars: int = Field(
        200,
        ge=0,
        description="How many characters each chunk repeats from the end of the one before; must be "
        "less than `chunk_chars`.",
    )
    output: str = Field(
        "chunk",
        min_length=1,
        description="The column that receives the chunk's text (it replaces a column of that name, "
        "`column` itself included).",
    )
    index_column: str = Field(
        "chunk_index",
        min_length=1,
        description="The column that receives the chunk's 0-based position within its row's text.",
    )

    @field_validator("overlap_chars")
    @classmethod
    def _written_overlap_below_chunk(cls, value: int, info: ValidationInfo) -> int:
        # the model validator below holds the rule; this copy only points at the line that breaks it
        chunk = info.data.get("chunk_chars")
        if isinstance(chunk, int) and value >= chunk:
            raise ValueError(f"overlap_chars must be less than chunk_chars ({chunk})")
        return value

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> ChunkText:
        if self.overlap_chars >= self.chunk_chars:
            given = "" if "overlap_chars" in self.model_fields_set else ", its default"
            raise ValueError(
                f"overlap_chars ({self.overlap_chars}{given}) must be less than chunk_chars "
                f"({self.chunk_chars}); set overlap_chars lower"
            )
        if self.output == self.index_column:
            raise ValueError(f"`output` and `index_column` are both '{self.output}'; name two columns")
        return self

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        return None if known is None else {**known, self.output: "string", self.index_column: "int64"}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(self.column, ("column",))]

    def column_kinds(self) -> dict[tuple[str | int, ...], ColumnKind]:
        return {("column",): "string"}


@register_op
class Limit(TransformSpec):
    """Pass on only the first `n` rows of the stream."""

    per_batch: ClassVar[bool] = False
    barrier: ClassVar[bool] = True

    op: Literal["limit"] = Field(description="Keep the first n rows.")
    n: int = Field(ge=0, description="How many rows to keep.")


_LIST_TYPE = re.compile(r"^(?:large_|fixed_size_)?list<(?:[^:<>]+: )?(.+?)(?: not null)?>(?:\[\d+\])?$")


def _item_type(type_name: str) -> str:
    """The element type of an Arrow list type name (``list<item: string>`` -> ``string``)."""
    m = _LIST_TYPE.match(type_name)
    return m.group(1) if m else "any"


def _first(inputs: object) -> Columns | None:
    if isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None:
        return inputs[0]
    return None
