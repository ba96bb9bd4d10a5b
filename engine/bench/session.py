"""One ``headrace bench`` session: the variants (the cross product of ``--vary`` values), the scratch
inputs and outputs, warm-up runs, repeats retried when the machine was disturbed, and the results
document that the table, ``--json``, the HTML report and baselines are made from.

Each variant is a list of ``--set`` values: the user's ``--set`` first, then the scratch input's path
(``--input-size``), then the variant's values, then (unless outputs are kept) every sink's and
dead-letter path under the scratch folder, so a later value wins over an earlier one. Each repeat
writes into its own scratch folder, removed once the repeat is measured.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.bench.figures import median_repeat, repeat_figures, variant_figures
from engine.bench.harness import DISTURBED_SHARE, MAX_EXTRA_REPEATS, machine_info, repeat_quietly
from engine.bench.inputs import build_inputs
from engine.bench.pipeline import inspect_pipeline
from engine.bench.runners import Runner, RunOutcome


@dataclass(frozen=True)
class BenchRequest:
    """What to benchmark and how (the ``headrace bench`` options)."""

    path: str
    sets: tuple[str, ...] = ()
    vary: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``--vary KEY=V1,V2``: each key with its values, in the order given."""
    repeats: int = 3
    warmup: int = 1
    input_size: int | None = None
    keep_outputs: bool = False
    scratch: str | None = None
    """Where inputs and outputs go (None: a new temporary folder, removed at the end)."""
    cache: bool = False
    extra_repeats: int = MAX_EXTRA_REPEATS
    command: list[str] = field(default_factory=list)


def parse_vary(text: str) -> tuple[str, tuple[str, ...]]:
    """``KEY=V1,V2,...`` as ``(KEY, (V1, V2, ...))``."""
    key, sep, values = text.partition("=")
    listed = tuple(v.strip() for v in values.split(",")) if sep else ()
    if not key.strip() or not listed or any(v == "" for v in listed):
        raise ValueError(f"{text!r}: give KEY=V1,V2,... (a --set key and its values, comma-separated)")
    return key.strip(), listed


def variants(vary: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
    """Every combination of the values of ``vary`` (one empty variant without it)."""
    keys = [k for k, _ in vary]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--vary names {sorted({k for k in keys if keys.count(k) > 1})[0]} twice")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in vary))]


def variant_name(settings: dict[str, str]) -> str:
    """``key=value`` pairs, or ``default`` for the pipeline as it is."""
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "default"


def run_bench(
    request: BenchRequest, runner: Runner, *, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run every variant ``request.warmup`` times untimed, then ``request.repeats`` times measured;
    return the results document (machine, where, settings, inputs, variants with their figures)."""
    machine = machine_info()
    facts = inspect_pipeline(request.path, request.sets)  # refused, located, before anything runs
    scratch = request.scratch or tempfile.mkdtemp(prefix="headrace-bench-")
    owned = request.scratch is None
    try:
        built = []
        input_sets: list[str] = []
        if request.input_size is not None:
            built = build_inputs(facts.sources, request.input_size, os.path.join(scratch, "inputs"))
            input_sets = [f"nodes.{b.node}.path={b.path}" for b in built]
            for b in built:
                say(f"input {b.node}: {b.path} ({b.bytes / 1e6:,.1f} MB, {b.rows:,} rows, x{b.copies:g})")
        results = []
        combos = variants(request.vary)
        for number, settings in enumerate(combos):
            name = variant_name(settings)
            sets = [*request.sets, *input_sets, *(f"{k}={v}" for k, v in settings.items())]
            results.append(
                _measure_variant(
                    request, runner, name, settings, sets, os.path.join(scratch, f"v{number}"), say
                )
            )
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "pipeline": facts.name,
        "path": os.path.abspath(request.path),
        "command": request.command,
        "machine": machine,
        "where": runner.where,
        "settings": {
            "repeats": request.repeats,
            "warmup": request.warmup,
            "sets": list(request.sets),
            "vary": {k: list(v) for k, v in request.vary},
            "input_size": request.input_size,
            "outputs": "kept where the pipeline writes them" if request.keep_outputs else "scratch",
            "cache": request.cache,
            "disturbed_share": DISTURBED_SHARE,
            "extra_repeats": request.extra_repeats,
        },
        "inputs": [b.as_dict() for b in built],
        "variants": results,
    }


_TIMELINE_POINTS = 300
"""Memory samples kept of a repeat (10 a second): enough for a plot, small in JSON."""


def _thin(points: Sequence[tuple[float, float]], most: int) -> list[list[float]]:
    """At most ``most`` of ``points``, evenly spaced, the first and the peak kept."""
    if len(points) <= most:
        return [list(p) for p in points]
    step = len(points) / most
    kept = {int(i * step) for i in range(most)} | {max(range(len(points)), key=lambda i: points[i][1])}
    return [list(points[i]) for i in sorted(kept)]


def _measure_variant(
    request: BenchRequest,
    runner: Runner,
    name: str,
    settings: dict[str, str],
    sets: list[str],
    folder: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    facts = inspect_pipeline(request.path, sets)  # this variant's LLM nodes, limits and sinks
    count = itertools.count()

    def once() -> tuple[RunOutcome, dict[str, Any]]:
        where = os.path.join(folder, f"r{next(count)}")
        outputs = [] if request.keep_outputs else facts.scratch_overrides(where)
        try:
            outcome = runner.run(request.path, [*sets, *outputs])
        finally:
            shutil.rmtree(where, ignore_errors=True)
        return outcome, repeat_figures(outcome, facts)

    for _ in range(request.warmup):
        once()
    measured = repeat_quietly(
        once, request.repeats, lambda r: r[0].others_cpu_share, extra_repeats=request.extra_repeats
    )
    repeats = [figures for _, figures in measured.kept]
    middle = median_repeat(repeats)
    variant: dict[str, Any] = {
        "name": name,
        "settings": settings,
        "repeats": repeats,
        "discarded_repeats": [
            {"wall_s": f["wall_s"], "other_cpu_share": f["other_cpu_share"]} for _, f in measured.discarded
        ],
        "figures": variant_figures(repeats),
        "memory_timeline": _thin(measured.kept[middle][0].timeline, _TIMELINE_POINTS),
    }
    say(f"{name}: median {variant['figures']['wall_s']['median']:.3f}s over {len(repeats)} repeats")
    return variant
