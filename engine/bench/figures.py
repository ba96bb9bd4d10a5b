"""The figures of ``headrace bench``: those of one repeat, read from the run's summary and the samples
of its process tree, and those of a variant, the median and min–max over its repeats.

Per-node rows and seconds, bytes read, LLM requests, tokens, cost and retries are the run summary's own
(what ``headrace run --json`` prints); this module only divides them by the run's wall time or rows.
A figure that could not be measured (memory against an engine on another machine, input bytes of a
remote source) is ``None``, never zero.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from engine.bench.harness import spread
from engine.bench.pipeline import PipelineFacts, RateLimit
from engine.bench.runners import RunOutcome

RUN_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("wall_s", "wall time, seconds", "wall s"),
    ("input_mb_per_s", "input MB per second of wall time", "MB/s"),
    ("rows_per_s", "input rows per second of wall time", "rows/s"),
    ("cpu_s_per_gb", "CPU-seconds of the process tree per GB of input", "CPU-s/GB"),
    ("peak_memory_mb", "peak memory of the process tree (with the object store), MB", "peak MB"),
    ("peak_object_store_mb", "peak memory of the object store, MB", "store MB"),
    ("tree_cpu_s", "CPU-seconds of the process tree", "CPU-s"),
    ("other_cpu_share", "share of the machine's CPU other processes took meanwhile", "others' CPU"),
)
"""Figures of a whole run: key, what it is, a short name for tables."""

LLM_FIGURES = ("requests_per_s", "tokens_per_s", "cost_per_1k_rows", "rate_limit_share", "retries")
MACHINE_FIGURES = ("peak_memory_mb", "peak_object_store_mb", "tree_cpu_s", "other_cpu_share")

_MB = 1e6


def repeat_figures(outcome: RunOutcome, facts: PipelineFacts) -> dict[str, Any]:
    """The figures of one run (see :data:`RUN_FIGURES`), per pipeline node, per LLM node, per machine."""
    summary = outcome.summary
    nodes: Mapping[str, Any] = summary.get("nodes") or {}
    wall = max(outcome.wall_s, 1e-9)
    sources = [s.node for s in facts.sources if s.node in nodes]
    rows_in = sum(int(nodes[n]["rows"]) for n in sources)
    bytes_in = sum(int(nodes[n].get("bytes_read", 0)) for n in sources) or facts.input_bytes()
    tree = outcome.tree
    cpu = tree["tree_cpu_s"] if tree is not None else None
    figures: dict[str, Any] = {
        "run_id": summary.get("run_id"),
        "wall_s": round(outcome.wall_s, 3),
        "run_s": summary.get("seconds"),
        "rows_in": rows_in,
        "bytes_in": bytes_in,
        "input_mb_per_s": round(bytes_in / _MB / wall, 3) if bytes_in else None,
        "rows_per_s": round(rows_in / wall, 1) if sources else None,
        "cpu_s_per_gb": round(cpu / (bytes_in / 1e9), 2) if cpu is not None and bytes_in else None,
        "tree_cpu_s": cpu,
        "peak_memory_mb": tree["peak_memory_mb"] if tree is not None else None,
        "peak_object_store_mb": tree["peak_object_store_mb"] if tree is not None else None,
        "other_cpu_share": tree["other_cpu_share"] if tree is not None else None,
        "split_retries": int(summary.get("retries", 0)),
        "nodes": {
            name: {
                "rows": int(n["rows"]),
                "seconds": float(n["seconds"]),
                "rows_per_s": round(n["rows"] / n["seconds"], 1) if n["seconds"] > 0 else None,
            }
            for name, n in nodes.items()
        },
        "llm": {
            name: _llm_figures(n, wall, facts.rate_limits.get(name))
            for name, n in nodes.items()
            if n.get("llm") is not None
        },
        "machines": {
            machine: {key: m.get(key) for key in MACHINE_FIGURES} | {"host": m.get("host", machine)}
            for machine, m in outcome.machines.items()
        },
    }
    return figures


def _llm_figures(node: Mapping[str, Any], wall: float, limit: RateLimit | None) -> dict[str, Any]:
    usage = node["llm"]
    answered = int(usage["requests"])
    attempts = answered + int(usage["failed_requests"])
    tokens_in, tokens_out = int(usage["input_tokens"]), int(usage["output_tokens"])
    rows = int(node["rows"])
    return {
        "requests": answered,
        "cached_requests": int(usage["cached_requests"]),
        "requests_per_s": round(answered / wall, 2),
        "tokens_per_s": round((tokens_in + tokens_out) / wall, 1),
        "cost_usd": float(usage["cost_usd"]),
        "cost_per_1k_rows": round(float(usage["cost_usd"]) / rows * 1000, 6) if rows else None,
        "rate_limit_share": rate_limit_share(limit, attempts, tokens_in, tokens_out, wall),
        "retries": int(usage["failed_requests"]),
    }


def rate_limit_share(
    limit: RateLimit | None, attempts: int, tokens_in: int, tokens_out: int, wall_s: float
) -> float | None:
    """The largest share of a configured per-minute limit the run's average rate reached (requests
    count every attempt, answered or not: the provider counts them all); None without limits."""
    if limit is None:
        return None
    per_minute = 60.0 / max(wall_s, 1e-9)
    shares = [
        used * per_minute / allowed
        for used, allowed in (
            (attempts, limit.requests_per_minute),
            (tokens_in, limit.input_tokens_per_minute),
            (tokens_out, limit.output_tokens_per_minute),
        )
        if allowed
    ]
    return round(max(shares), 4) if shares else None


def variant_figures(repeats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and min–max over ``repeats`` of every figure (a figure never measured is None)."""
    out: dict[str, Any] = {key: _spread([r.get(key) for r in repeats]) for key, _, _ in RUN_FIGURES}
    out["nodes"] = {
        name: _group(repeats, "nodes", name, ("rows_per_s", "seconds")) for name in repeats[0]["nodes"]
    }
    out["llm"] = {name: _group(repeats, "llm", name, LLM_FIGURES) for name in repeats[0]["llm"]}
    out["machines"] = {
        machine: _group(repeats, "machines", machine, MACHINE_FIGURES)
        | {"host": repeats[0]["machines"][machine].get("host", machine)}
        for machine in repeats[0]["machines"]
    }
    return out


def _group(repeats: Sequence[Mapping[str, Any]], part: str, name: str, keys: Sequence[str]) -> dict[str, Any]:
    return {key: _spread([r[part].get(name, {}).get(key) for r in repeats]) for key in keys}


def _spread(values: Sequence[Any]) -> dict[str, float] | None:
    numbers = [float(v) for v in values if v is not None]
    return spread(numbers, 4) if numbers else None


def median_repeat(repeats: Sequence[Mapping[str, Any]]) -> int:
    """The index of the repeat whose wall time is the median's (the lower middle for an even count)."""
    order = sorted(range(len(repeats)), key=lambda i: repeats[i]["wall_s"])
    middle = statistics.median_low([repeats[i]["wall_s"] for i in order])
    return next(i for i in order if repeats[i]["wall_s"] == middle)
