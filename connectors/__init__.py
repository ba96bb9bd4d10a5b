"""Sources and sinks over fsspec filesystems; importing this package registers their ops."""

from __future__ import annotations

from connectors.sinks import FileSink, WriteCsv, WriteJsonl, WriteParquet
from connectors.sources import FileSource, ReadCsv, ReadJsonl, ReadParquet, ReadText

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
