"""Sources and sinks over fsspec filesystems; importing this package registers their ops."""

from __future__ import annotations

from connectors.sinks import FileSink, WriteCsv, WriteJsonl, WriteParquet
from connectors.sources import FileSource, ReadCsv, ReadJsonl, ReadParquet, ReadText
from engine.spec.registry import register_behaviour

__all__ = [
    "FileSink",
    "FileSource",
    "ReadCsv",
    "ReadJsonl",
    "ReadParquet",
    "ReadText",
    "WriteCsv",
    "WriteJsonl",
    "WriteParquet",
]

# What the built-in sources and sinks do, as import paths (resolved by a run, never by validation).
for _op, _reader in {
    "read_csv": "CSV",
    "read_jsonl": "JSONL",
    "read_text": "TEXT",
    "read_parquet": "PARQUET",
}.items():
    register_behaviour(_op, reader=f"connectors.readers:{_reader}")
for _op, _writer in {
    "write_parquet": "_ParquetPart",
    "write_csv": "_CsvPart",
    "write_jsonl": "_JsonlPart",
}.items():
    register_behaviour(_op, writer=f"connectors.writers:{_writer}")
