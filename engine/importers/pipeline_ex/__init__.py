"""pipeline_ex (the Elixir orchestrator headrace succeeds) workflows as headrace state graphs.

:func:`import_pipeline_ex` converts a ``workflow:`` file (``convert``); the converted graph's nodes run
the functions of ``runtime``, which evaluate pipeline_ex's conditions, templates and prompts as its
runtime did (``expressions``, ``transforms``).
"""

from __future__ import annotations

from pathlib import Path

from engine.importers.pipeline_ex.convert import Conversion, ImportProblem, convert_workflow

__all__ = ["Conversion", "ImportProblem", "import_pipeline_ex"]


def import_pipeline_ex(path: str, *, base_dir: str | None = None) -> Conversion:
    """Convert the pipeline_ex workflow at ``path`` (sub-workflows relative to ``base_dir``, default the
    working directory, as pipeline_ex reads them); never raises for a bad file: see ``problems``."""
    return convert_workflow(path, base_dir=Path(base_dir) if base_dir else None)
