"""``python -m benchmarks scaling``: is headrace's peak memory flat as the input grows 10×?

Runs headrace and plain Ray tasks (the pattern headrace compiles to) on each streaming case at 1 GB
and 10 GB, once each, in isolated processes, and writes the peak memory of the whole process tree and
the MB/s of each, with the 10 GB / 1 GB ratio, to ``benchmarks/results/<date>-memory-scaling.json``
and a markdown table beside it.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.data import DATA_DIR, size_label
from benchmarks.harness import RESULTS_DIR, machine_info
from benchmarks.streaming import CASES, run_case

SIZES = (1_000_000_000, 10_000_000_000)
SYSTEMS = ("headrace", "ray_tasks")
FLAT = 1.25  # "flat": peak memory at 10× the input within 25% of the peak at 1×


def run_scaling(data_dir: Path = DATA_DIR, results_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    """Measure, write the JSON and markdown, and return the document."""
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in CASES:
        for size in SIZES:
            print(f"{name} at {size_label(size)}", flush=True)
            result = run_case(name, size, 1, SYSTEMS, data_dir=data_dir, isolate=True)
            for system in SYSTEMS:
                figures = result["systems"][system]
                rows.append(
                    {
                        "case": name,
                        "size": size_label(size),
                        "system": system,
                        "mb_per_s": figures.get("mb_per_s"),
                        "peak_memory_mb": figures.get("peak_memory_mb"),
                        "error": figures.get("error"),
                    }
                )
            if size >= 4_000_000_000:
                shutil.rmtree(result["dataset"]["path"], ignore_errors=True)
    doc = {
        "name": "memory-scaling",
        "command": "python -m benchmarks scaling",
        "machine": machine_info(),
        "flat_means": f"peak at 10 GB <= {FLAT} x peak at 1 GB",
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    stem = f"{date.today().isoformat()}-memory-scaling"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    (results_dir / f"{stem}.md").write_text(render(doc, f"benchmarks/results/{stem}.json"))
    print(render(doc, f"benchmarks/results/{stem}.json"))
    return doc


def render(doc: dict[str, Any], source: str) -> str:
    """A markdown table: peak memory and MB/s at 1 and 10 GB, and whether memory stayed flat."""
    lines = [
        f"Peak memory as the input grows 10× (from `{source}`):",
        "",
        "| case | system | MB/s 1 GB | MB/s 10 GB | peak MB 1 GB | peak MB 10 GB | ratio | flat? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r["case"], r["system"], r["size"]): r for r in doc["rows"]}
    for case in CASES:
        for system in SYSTEMS:
            small, big = by.get((case, system, "1gb")), by.get((case, system, "10gb"))
            if not small or not big or not small["peak_memory_mb"] or not big["peak_memory_mb"]:
                error = (small or {}).get("error") or (big or {}).get("error")
                lines.append(f"| {case} | {system} | failed: {error} |")
                continue
            ratio = big["peak_memory_mb"] / small["peak_memory_mb"]
            lines.append(
                f"| {case} | {system} | {small['mb_per_s']:.0f} | {big['mb_per_s']:.0f} | "
                f"{small['peak_memory_mb']:.0f} | {big['peak_memory_mb']:.0f} | ×{ratio:.2f} | "
                f"{'yes' if ratio <= FLAT else 'no'} |"
            )
    return "\n".join(lines) + "\n"
