"""Sink nodes: write a stream as part files, each renamed into place when complete, plus a manifest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.spec.models import SinkSpec
from engine.spec.registry import register_op


class FileSink(SinkSpec):
    """Fields shared by every file sink."""

    path: str = Field(
        description="The output folder (local or an fsspec URL); parts and `_manifest.json` go in "
        "it. Relative paths are relative to the pipeline file."
    )
    overwrite: bool = Field(
        False,
        description="Replace the output of an earlier, different run in `path`; otherwise such a "
        "folder is an error.",
    )


@register_op
class WriteParquet(FileSink):
    """Write Parquet part files."""

    op: Literal["write_parquet"] = Field(description="Write Parquet files.")
    compression: Literal["snappy", "zstd", "gzip", "lz4", "none"] = Field(
        "snappy", description="Column compression codec."
    )
    compression_level: int | None = Field(None, description="Codec level, for zstd and gzip.")
    use_dictionary: bool = Field(
        True,
        description="Dictionary-encode columns. A column whose values, sampled from a part's first "
        "batch, are nearly all distinct, or would overflow pyarrow's 1 MiB dictionary page, is written "
        "plainly (a dictionary of unique values cannot pay, and pyarrow would give up on it part-way).",
    )
    row_group_rows: int = Field(1_048_576, ge=1, description="The most rows in one Parquet row group.")


@register_op
class WriteJsonl(FileSink):
    """Write JSON Lines part files: one object per row."""

    op: Literal["write_jsonl"] = Field(description="Write JSON Lines files.")


@register_op
class WriteCsv(FileSink):
    """Write CSV part files."""

    op: Literal["write_csv"] = Field(description="Write CSV files.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field delimiter.")
    header: bool = Field(True, description="Write a header line in each part.")
