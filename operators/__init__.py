"""What nodes do; importing this package registers the built-in ops."""

from __future__ import annotations

from operators.control import Call
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmMap, LlmSpec
from operators.pii import PiiDetect, PiiMask
from operators.stateful import Aggregate, Aggregation, Dedupe
from operators.text import chunk_spans
from operators.transforms import (
    Cast,
    ChunkText,
    Explode,
    Filter,
    FlatMap,
    Limit,
    MapBatches,
    Rename,
    Sample,
    Select,
    Sql,
)

__all__ = [
    "Aggregate",
    "Aggregation",
    "Call",
    "Cast",
    "ChunkText",
    "Dedupe",
    "Explode",
    "Filter",
    "FlatMap",
    "Limit",
    "LlmClassify",
    "LlmExtract",
    "LlmFilter",
    "LlmMap",
    "LlmSpec",
    "MapBatches",
    "PiiDetect",
    "PiiMask",
    "Rename",
    "Sample",
    "Select",
    "Sql",
    "chunk_spans",
]
