"""What nodes do; importing this package registers the built-in ops."""

from __future__ import annotations

from engine.spec.registry import register_behaviour
from operators.control import Call, SubPipeline
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
    "SubPipeline",
    "chunk_spans",
]

# What the built-in ops do, as import paths: validating a pipeline imports none of it (duckdb, pyarrow
# compute); a run resolves what its nodes need (engine.spec.registry.behaviour).
for _op, _fn in {
    "sql": "_sql",
    "filter": "_filter",
    "select": "_select",
    "rename": "_rename",
    "cast": "_cast",
    "map_batches": "_map_batches",
    "flat_map": "_flat_map",
    "explode": "_explode",
    "sample": "_sample",
    "chunk_text": "_chunk_text",
}.items():
    register_behaviour(_op, batch=f"operators.batch:{_fn}")
register_behaviour("pii_detect", batch="operators.pii_batch:_pii_detect")
register_behaviour("pii_mask", batch="operators.pii_batch:_pii_mask")
register_behaviour("limit", state="operators.stateful:LimitState")
register_behaviour("dedupe", state="operators.stateful:DedupeState")
register_behaviour("aggregate", state="operators.stateful:AggregateState")
