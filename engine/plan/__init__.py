"""The plan layer: an immutable IR built and checked from a validated pipeline."""

from __future__ import annotations

from engine.plan.build import PlanProblems, Problem, build_plan, spec_hash
from engine.plan.ir import NodeId, Plan, PlanNode

__all__ = ["NodeId", "Plan", "PlanNode", "PlanProblems", "Problem", "build_plan", "spec_hash"]
