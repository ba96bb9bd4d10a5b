"""What nodes do; importing this package registers the built-in ops."""

from __future__ import annotations

from operators.control import Call
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmMap, LlmSpec
from operators.transforms import Cast, Filter, Limit, MapBatches, Rename, Select, Sql

__all__ = [
    "Call",
    "Cast",
    "Filter",
    "Limit",
    "LlmClassify",
    "LlmExtract",
    "LlmFilter",
    "LlmMap",
    "LlmSpec",
    "MapBatches",
    "Rename",
    "Select",
    "Sql",
]
