"""The public API of each package is stated once in ``__all__``; these lists are pinned."""

from __future__ import annotations

import importlib

import pytest

EXPORTED = {
    "engine": [
        "END",
        "FORMAT_VERSION",
        "START",
        "CheckedPipeline",
        "Command",
        "ConfigError",
        "DataError",
        "Diagnostic",
        "Engine",
        "EngineBusy",
        "Graph",
        "HeadraceError",
        "NodeSpec",
        "Pipeline",
        "PlanError",
        "RunError",
        "RunHandle",
        "RunSummary",
        "Send",
        "TenantQuota",
        "check_file",
        "load_pipeline",
        "register_op",
        "run_checked",
    ],
    "engine.importers": ["Conversion", "ImportProblem", "import_pipeline_ex"],
    "engine.records": [
        "EVENT_KINDS",
        "Event",
        "EventKind",
        "FsspecRecords",
        "MemoryRecords",
        "NodeView",
        "RecordStatus",
        "RecordStore",
        "Recorder",
        "RecordsError",
        "RunHeader",
        "RunView",
        "SqliteRecords",
        "open_records",
    ],
    "engine.graph": [
        "END",
        "REDUCERS",
        "START",
        "Command",
        "CompiledGraph",
        "Graph",
        "GraphError",
        "GraphInterrupt",
        "GraphRecursionError",
        "InvalidGraph",
        "InvalidUpdate",
        "NodeFailed",
        "RetryPolicy",
        "RunState",
        "Send",
        "StepView",
        "default_retry_on",
        "interrupt",
        "once",
    ],
    "engine.runtime": ["NodeStats", "RunStatus", "RunSummary", "new_run_id", "run_checked"],
    "engine.plan": ["NodeId", "Plan", "PlanNode", "PlanProblems", "Problem", "build_plan", "spec_hash"],
    "connectors": [
        "FileSink",
        "FileSource",
        "ReadCsv",
        "ReadJsonl",
        "ReadParquet",
        "ReadText",
        "WriteCsv",
        "WriteJsonl",
        "WriteParquet",
    ],
    "operators": [
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
    ],
}


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_all_is_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == EXPORTED[package]


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_every_exported_name_is_importable(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None
        namespace: dict[str, object] = {}
        exec(f"from {package} import {name}", namespace)
        assert namespace[name] is getattr(module, name)
