"""Compilation: a checked pipeline becomes a frozen, runnable plan, with every problem a run would hit.

``compile_pipeline`` is the one step between :func:`engine.check.check_file` and the runtime: it fuses
stages, builds the physical stages with their Ray options, plans the LLM pools (providers, models,
prices), applies the deployment's policy and checks column types, without starting Ray. ``validate``,
``estimate``, ``run`` and ``Engine.submit`` all call it, so what a run would refuse before its first row
``validate`` refuses too, located as ``file:line:col``; the runtime only executes a :class:`Compiled`.
"""

from __future__ import annotations

from engine.compile.compiled import Compiled
from engine.compile.compiler import capacity_problems, compile_pipeline, placement_problems

__all__ = ["Compiled", "capacity_problems", "compile_pipeline", "placement_problems"]
