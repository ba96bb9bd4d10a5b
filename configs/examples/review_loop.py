"""Node functions of ``review_loop.yaml``: a deterministic draft-and-review loop (no network, no LLM).

A state node is ``fn(state, **kwargs) -> partial update``: it reads the typed state (a pydantic model
built from the pipeline's ``state.fields``) and returns only the fields it changes; each field's reducer
merges the update (``notes`` appends).
"""

from __future__ import annotations

from typing import Any

_IDEAS = ["a clear title", "one example per claim", "a summary up front", "shorter sentences"]


def write_draft(state: Any, words_per_round: int = 2) -> dict[str, Any]:
    """Revise the draft: each round adds the next idea the reviews asked for."""
    idea = _IDEAS[state.revisions % len(_IDEAS)]
    draft = f"{state.draft} {idea}".strip() if state.draft else f"{state.topic}: {idea}"
    return {
        "draft": draft,
        "revisions": state.revisions + 1,
        "notes": f"wrote revision {state.revisions + 1}",
    }


def review_draft(state: Any, per_idea: int = 3) -> dict[str, Any]:
    """Score the draft: ``per_idea`` points for each idea in it, capped at 10."""
    score = min(10, per_idea * sum(idea in state.draft for idea in _IDEAS))
    return {"score": score, "notes": f"scored {score}"}


def publish(state: Any) -> dict[str, Any]:
    """Mark the draft as published."""
    return {"published": True, "notes": f"published after {state.revisions} revisions"}
