"""The compiled plan of one pipeline: what the runtime executes, and what compilation found wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.check import CheckedPipeline
from engine.errors import ConfigError, Diagnostic
from engine.optimizer import Stage
from engine.physical import PhysicalStage, PoolPlan
from engine.policy import Policy
from operators.providers.pricing import PriceTable


@dataclass(frozen=True)
class Compiled:
    """A checked pipeline compiled for the runtime; frozen, and built without Ray.

    ``problems`` holds every diagnostic found, located in the pipeline file (the checked pipeline's
    warnings first); the plan is runnable only when none is an error (:meth:`raise_errors`).
    """

    checked: CheckedPipeline
    kind: Literal["dataflow", "graph"]
    """``graph``: a state-graph pipeline, compiled by :mod:`engine.graph`; the other fields stay empty."""
    stages: tuple[Stage, ...]
    """Fused stages: source, per-batch and pooled nodes, barriers, sink."""
    physical: tuple[PhysicalStage, ...]
    """The stages as Ray task specifications with their resolved paths and Ray options."""
    pools: tuple[PoolPlan, ...]
    """One actor pool per LLM node: providers, models, retry policy, size and Ray options."""
    prices: PriceTable | None
    """The price of every model the pools call (None when the price overrides are invalid)."""
    policy: Policy
    """The deployment policy the paths and code were checked against."""
    cache_url: str | None
    """Where the LLM response cache lives; None when the pipeline or the caller turned it off."""
    problems: tuple[Diagnostic, ...]

    @property
    def errors(self) -> list[Diagnostic]:
        """The problems that keep the pipeline from running."""
        return [d for d in self.problems if d.severity == "error"]

    def raise_errors(self) -> Compiled:
        """``self`` when nothing keeps it from running; otherwise ConfigError with every error."""
        if self.errors:
            raise ConfigError(self.errors)
        return self
