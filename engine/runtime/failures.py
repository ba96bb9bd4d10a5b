"""Why a run failed, said so a person can act on it: where in the pipeline file, where in the input,
and what to do next.

The worker's errors already name the node and the input (file, split, byte range, row); the driver,
which holds the pipeline document, adds the node's ``file:line:col`` and a next step that fits the kind
of node and failure, and hands the same facts to the run record as fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.check import CheckedPipeline
from engine.errors import (
    BudgetExceeded,
    ClusterError,
    DataError,
    FatalRunError,
    HeadraceError,
    OutputError,
    RunError,
    TransientError,
)

_NODE = re.compile(r"node '([^']+)': ")
_SOURCES = ("read_",)
_LLM = ("llm_",)


@dataclass
class Failure:
    """A run's failure, located."""

    message: str
    """The one line the run summary and ``--json`` carry."""
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """The ``error`` event's fields: code, message, location, input, hint."""


def explain(exc: HeadraceError, checked: CheckedPipeline, run_id: str) -> Failure:
    """Place ``exc`` in the pipeline file and the input, and say what to do next."""
    text = str(exc)
    node = getattr(exc, "node", None)
    if node is None and (named := _NODE.search(text)) is not None:
        node = named.group(1)
    spec = checked.loaded.spec
    document = checked.loaded.document
    if node is not None and node not in spec.nodes:
        node = None
    location: dict[str, Any] = {}
    prefix = ""
    op = ""
    if node is not None:
        span = document.source_map.locate(("nodes", node), prefer="key")
        location = {"file": document.file_of(span), "line": span.line, "col": span.col}
        op = spec.nodes[node].op
        prefix = f"{document.file_of(span)}:{span.line}:{span.col}: "
        text = text.replace(f"node '{node}': ", f"node '{node}' ({op}): ", 1)
    hint = _next_step(exc, node, op, checked, run_id)
    message = f"{prefix}{text}" + (f"; {hint}" if hint else "")
    data: dict[str, Any] = {"code": exc.code, "message": str(exc), "location": location, "hint": hint}
    if isinstance(exc, DataError) and exc.input:
        data["input"] = dict(exc.input)
    return Failure(" ".join(message.split()), node, data)


def _next_step(exc: HeadraceError, node: str | None, op: str, checked: CheckedPipeline, run_id: str) -> str:
    path = checked.loaded.document.path
    resume = (
        "parts committed so far are kept; after the fix continue with "
        f"`headrace run {path} --resume {run_id}`"
    )
    if isinstance(exc, BudgetExceeded | OutputError):
        return ""  # the error's own message already says what to do
    if isinstance(exc, ClusterError):  # it says what the cluster lacks; the data is not at fault
        return resume
    if isinstance(exc, FatalRunError):
        return f"no row can pass until that is fixed; after the fix {resume.split('; ', 1)[1]}"
    if isinstance(exc, TransientError):
        return f"the storage kept failing; check that it is reachable, then {resume.split('; ', 1)[1]}"
    if isinstance(exc, RunError):
        return (
            "fix what made those rows fail (each dead-letter row carries its error), or raise the "
            f"node's max_failed_rows or max_failed_ratio; {resume}"
        )
    if node is None:
        return resume
    policy = checked.loaded.spec.nodes[node].on_error
    if policy is not None and policy.mode != "fail":
        # the node already sets bad rows aside: what stopped it was not one row's fault
        aside = (
            f"(node '{node}' already sets bad rows aside with `on_error: {policy.mode}`: this error is "
            "not one row's)"
        )
    else:
        aside = (
            f"or give node '{node}' `on_error: {{mode: dead_letter, dead_letter_path: ...}}` to set such "
            "rows aside and go on"
        )
    if op.startswith(_SOURCES):
        return f"fix the input at that place, {aside}; {resume}"
    if op.startswith(_LLM):
        return (
            f"check the provider's answer above (key, model, quota, status page), {aside}; "
            f"rows already answered come from the cache; {resume}"
        )
    return f"fix the node's code or expression for that input, {aside}; {resume}"
