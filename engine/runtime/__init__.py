"""The runtime: runs compiled pipelines on Ray and reports what happened."""

from __future__ import annotations

from engine.runtime.execute import new_run_id, run_checked
from engine.runtime.summary import NodeStats, RunStatus, RunSummary

__all__ = ["NodeStats", "RunStatus", "RunSummary", "new_run_id", "run_checked"]
