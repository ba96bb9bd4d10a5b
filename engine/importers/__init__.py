"""Importers: workflows written for other systems, converted into headrace pipelines."""

from __future__ import annotations

from engine.importers.pipeline_ex import Conversion, ImportProblem, import_pipeline_ex

__all__ = ["Conversion", "ImportProblem", "import_pipeline_ex"]
