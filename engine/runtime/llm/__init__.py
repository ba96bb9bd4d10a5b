"""The runtime of LLM nodes: actor pools, the shared rate limiter, the run's cost ledger."""

from __future__ import annotations
