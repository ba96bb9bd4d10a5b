"""Source nodes: read files (local paths or any fsspec URL) as a stream of Arrow batches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.spec.models import ByteCount, Columns, SourceSpec
from engine.spec.registry import register_op


class FileSource(SourceSpec):
    """Fields shared by every file source."""

    path: str | list[str] = Field(
        description="A file, a folder, a glob (`data/*.csv`) or an fsspec URL (`s3://b/k/*.csv`); "
        "or a list of them. Relative paths are relative to the pipeline file."
    )
    batch_rows: int | None = Field(
        None, ge=1, le=10_000_000, description="Rows per batch; defaults to `defaults.batch_rows`."
    )
    split_bytes: ByteCount = Field(
        64 * 1024 * 1024,
        description="Target size of one read split; large files are split on record boundaries so "
        "several workers read them at once.",
    )


@register_op
class ReadCsv(FileSource):
    """Read CSV files; quoted fields may hold delimiters, quotes and newlines."""

    op: Literal["read_csv"] = Field(description="Read CSV files.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field delimiter.")
    quote_char: str | None = Field(
        '"',
        min_length=1,
        max_length=1,
        description="Quote character; `null` for a file without quoting, where quotes are ordinary "
        "text and every newline ends a record (no pass over the file to find quoted newlines when it "
        "is split, and a faster parse).",
    )
    header: bool = Field(True, description="Whether the first line of each file names the columns.")
    column_names: list[str] | None = Field(None, description="Column names, for files without a header line.")
    column_types: dict[str, str] | None = Field(
        None,
        description="Arrow types of columns by name (`int64`, `string`, `double`, `bool`, "
        "`timestamp[s]`...); other columns are inferred from the start of the data.",
    )
    columns: list[str] | None = Field(None, description="Read only these columns, in this order.")
    null_values: list[str] = Field(default_factory=lambda: [""], description="Strings read as null.")
    encoding_errors: Literal["on_error", "fail", "replace"] = Field(
        "on_error",
        description="What a text cell that is not valid UTF-8 does: `on_error` makes its row a malformed "
        "row (set aside under the node's `on_error`, else the run fails naming file, byte offset, row "
        "and column); `fail` fails so whatever `on_error` says; `replace` reads each invalid byte as "
        "U+FFFD. Valid cells are never changed, and a column is never turned into bytes.",
    )

    def output_columns(self, inputs: object) -> Columns | None:
        types = self.column_types or {}
        names = self.columns or self.column_names
        if names is not None and all(n in types for n in names):
            return {n: types[n] for n in names}
        return None

    def arrow_types(self) -> dict[tuple[str | int, ...], str]:
        return {("column_types", name): t for name, t in (self.column_types or {}).items()}


@register_op
class ReadJsonl(FileSource):
    """Read newline-delimited JSON: one object per line becomes one row."""

    op: Literal["read_jsonl"] = Field(description="Read JSON Lines files.")
    column_types: dict[str, str] | None = Field(
        None, description="Arrow types of fields by name; others are inferred."
    )
    columns: list[str] | None = Field(None, description="Keep only these fields, in this order.")

    def output_columns(self, inputs: object) -> Columns | None:
        types = self.column_types or {}
        if self.columns is not None and all(n in types for n in self.columns):
            return {n: types[n] for n in self.columns}
        return None

    def arrow_types(self) -> dict[tuple[str | int, ...], str]:
        return {("column_types", name): t for name, t in (self.column_types or {}).items()}


@register_op
class ReadParquet(FileSource):
    """Read Parquet files, split by row groups."""

    op: Literal["read_parquet"] = Field(description="Read Parquet files.")
    columns: list[str] | None = Field(None, description="Read only these columns (projection).")


@register_op
class ReadText(FileSource):
    """Read text: one row per line, or one row per file for a folder of documents."""

    op: Literal["read_text"] = Field(description="Read text files.")
    mode: Literal["line", "file"] = Field(
        "line", description="`line`: a row per line; `file`: a row per file, with its path."
    )
    column: str = Field("text", min_length=1, description="Name of the text column.")
    encoding: str = Field("utf-8", description="Text encoding of the files.")

    def output_columns(self, inputs: object) -> Columns | None:
        if self.mode == "file":
            return {"path": "string", self.column: "string"}
        return {self.column: "string"}
