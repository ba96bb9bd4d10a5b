"""The "streaming transform" case family: each case at each size on headrace and its baselines.

Every system is measured in its own Ray session (started after the previous system's is stopped,
so one system's object-store pages and idle workers never count against another) and, from the
command line, in its own Python process (so one system's imports do not either). Before the timed
repetitions one worker per CPU is started and imports the system's libraries, and the system runs
once, untimed, on a small input of the same case: worker start-up and imports are not counted,
``ray.init`` is not counted, the pipeline check and compile of headrace and the planning of Ray
Data are. Inputs are read from the page cache (they were just generated or read), so the figures
measure CPU throughput, not disk; dirty pages are flushed before each run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.data import (
    DATA_DIR,
    LARGE_DATASET_BYTES,
    Dataset,
    Format,
    ensure_dataset,
    remove_large_datasets,
    size_label,
)
from benchmarks.harness import (
    MemorySampler,
    Mode,
    RunOptions,
    ray_running,
    repeat_quietly,
    shmem_bytes,
    summarise,
    sync_disks,
    warm_workers,
)
from benchmarks.systems import SYSTEMS, USES_RAY, Job, output_digest, output_rows, pipeline_yaml

ROOT = Path(__file__).resolve().parents[1]
WARMUP_BYTES = 16_000_000
"""Size of the untimed warm-up input of each system."""

BASELINES = ("pyarrow", "ray_tasks", "ray_data")

_COMMON_MODULES = ("pyarrow", "pyarrow.parquet", "pyarrow.csv", "pyarrow.compute", "duckdb")
WORKER_MODULES: dict[str, tuple[str, ...]] = {
    "ray_tasks": (*_COMMON_MODULES, "benchmarks.systems"),
    "ray_data": (*_COMMON_MODULES, "benchmarks.systems", "ray.data"),
    "headrace": (*_COMMON_MODULES, "engine.runtime.worker"),
}
"""What each Ray system's workers import while being warmed up."""


@dataclass(frozen=True)
class Case:
    """One job of the family: an input format and the DuckDB query applied to each batch."""

    name: str
    source: Format
    query: str
    description: str


CASES: dict[str, Case] = {
    "parquet_transform": Case(
        "parquet_transform",
        "parquet",
        "SELECT id, upper(text) AS text, number * 2 AS number FROM batch",
        "Parquet -> upper-case the text column, double the number -> Parquet",
    ),
    "csv_sql": Case(
        "csv_sql",
        "csv",
        "SELECT id, upper(text) AS text FROM batch WHERE number > 0.5",
        "CSV (quoted fields holding commas) -> SQL filter and projection -> Parquet",
    ),
}
"""The cases, by name (``--only NAME``)."""

FULL_SIZES = (1_000_000_000, 4_000_000_000, 10_000_000_000)
QUICK_SIZES = (200_000_000, 1_000_000_000)
"""``--quick``: 0.2 and 1 GB, as the benchmarks issue fixes them."""

REPEATS = 3
"""Timed repetitions of each system at each size, in the full and quick modes."""


def measure_system(
    case: Case, system: str, dataset: Dataset, warmup: Dataset, repeats: int, work_dir: Path
) -> dict[str, Any]:
    """Run one system ``repeats`` times on ``dataset`` (after warming up, untimed) and summarise.

    Starts and stops a Ray session for Ray systems, unless one is already initialised. A repeat
    during which other processes took more than ``DISTURBED_SHARE`` of the machine's CPU is
    run again (at most ``MAX_EXTRA_REPEATS`` times, :func:`repeat_quietly`); the discarded runs are reported.
    """
    run = SYSTEMS[system]
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "out"
    shm_baseline = shmem_bytes()
    session = ray_running() if system in USES_RAY else contextlib.nullcontext(False)

    def once() -> tuple[float, dict[str, float], dict[str, Any], int]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        sync_disks()
        job = Job(case.source, tuple(dataset.files), case.query, str(out), str(work_dir))
        with MemorySampler(shm_baseline) as sampler:
            began = time.perf_counter()
            extra = run(job)
            took = time.perf_counter() - began
        return took, sampler.peaks.as_dict(), extra, output_rows(str(out))

    with session as started:
        if system in USES_RAY:
            warm_workers(WORKER_MODULES[system])
        _run_once(run, case, warmup, out, work_dir)
        idle = MemorySampler(shm_baseline)
        idle.sample()
        measured = repeat_quietly(once, repeats, lambda r: r[1]["other_cpu_share"])
        digest = output_digest(str(out))
        shutil.rmtree(out, ignore_errors=True)
    seconds = [took for took, _, _, _ in measured.kept]
    peaks = [figures for _, figures, _, _ in measured.kept]
    rows = [count for _, _, _, count in measured.kept]
    extra = measured.kept[-1][2]
    discarded = [
        {"seconds": round(took, 3), "other_cpu_share": figures["other_cpu_share"]}
        for took, figures, _, _ in measured.discarded
    ]
    worst = max(peaks, key=lambda p: p["peak_memory_mb"])
    others = [p["other_cpu_share"] for p in peaks]
    cpu = [p["tree_cpu_s"] for p in peaks]
    return {
        **summarise(seconds, dataset.bytes),
        **{k: v for k, v in worst.items() if k not in ("tree_cpu_s", "other_cpu_share")},
        "peak_memory_mb_per_repeat": [p["peak_memory_mb"] for p in peaks],
        "idle_memory_mb": idle.peaks.as_dict()["peak_memory_mb"],
        "cpu_s_per_gb": round(statistics.median(cpu) / (dataset.bytes / 1e9), 2),
        "tree_cpu_s_per_repeat": cpu,
        "other_cpu_share_per_repeat": others,
        "other_cpu_share_max": max(others),
        "discarded_repeats": discarded,
        "rows_out": rows[-1],
        "rows_out_stable": len(set(rows)) == 1,
        "output_digest": digest,
        "ray_session": "started" if started else ("reused" if system in USES_RAY else "none"),
        "detail": extra,
    }


def _run_once(run: Any, case: Case, dataset: Dataset, out: Path, work_dir: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run(Job(case.source, tuple(dataset.files), case.query, str(out), str(work_dir)))
    shutil.rmtree(out, ignore_errors=True)


def run_case(
    name: str,
    size_bytes: int,
    repeats: int = 1,
    systems: Sequence[str] = tuple(SYSTEMS),
    *,
    data_dir: Path | None = None,
    work_dir: Path | None = None,
    isolate: bool = False,
) -> dict[str, Any]:
    """Measure case ``name`` on an input of about ``size_bytes`` on each of ``systems``.

    With ``isolate`` each system runs in a fresh ``python -m benchmarks measure-one`` process;
    otherwise in this process (reusing an initialised Ray, or starting and stopping one per system;
    memory is that of this process's whole tree, so a Ray running here counts for every system).
    Returns the case's result for this size: dataset, per-system figures, and the ratios of each
    system's median MB/s to each baseline's.
    """
    case = CASES[name]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {list(SYSTEMS)}")
    dataset = ensure_dataset(case.source, size_bytes, data_dir)
    warmup = ensure_dataset(case.source, min(WARMUP_BYTES, size_bytes), data_dir)
    owned = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="bench-", dir=data_dir or DATA_DIR)) if owned else work_dir
    assert base is not None
    results: dict[str, Any] = {}
    try:
        for system in systems:
            folder = base / f"{name}-{size_label(size_bytes)}-{system}"
            began = time.perf_counter()
            if isolate:
                results[system] = _measure_isolated(case, system, dataset, warmup, repeats, folder)
            else:
                results[system] = measure_system(case, system, dataset, warmup, repeats, folder)
            results[system]["harness_seconds"] = round(time.perf_counter() - began, 1)
            _print_line(name, size_bytes, system, results[system])
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
    measured = {s: r for s, r in results.items() if "mb_per_s" in r}
    digests = {json.dumps(r["output_digest"], sort_keys=True) for r in measured.values()}
    job = Job(case.source, tuple(dataset.files), case.query, "OUTPUT", "WORK")
    return {
        "case": name,
        "size_bytes": size_bytes,
        "size_label": size_label(size_bytes),
        "description": case.description,
        "dataset": dataset.as_dict(),
        "query": case.query,
        "pipeline_yaml": pipeline_yaml(job),
        "systems": results,
        "ratios": _ratios(measured),
        "outputs_agree": len(digests) <= 1,
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``ratios[system][baseline]``: the system's median MB/s over the baseline's."""
    return {
        system: {
            base: round(r["mb_per_s"] / results[base]["mb_per_s"], 3)
            for base in BASELINES
            if base in results and base != system and results[base]["mb_per_s"] > 0
        }
        for system, r in results.items()
    }


def _measure_isolated(
    case: Case, system: str, dataset: Dataset, warmup: Dataset, repeats: int, folder: Path
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    spec = {
        "case": case.name,
        "system": system,
        "dataset": dataset.as_dict(),
        "warmup": warmup.as_dict(),
        "repeats": repeats,
        "work_dir": str(folder),
        "result": str(result_path),
    }
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log = folder.parent / f"{folder.name}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", "measure-one", str(spec_path)],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0 or not result_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        return {"error": f"exit status {proc.returncode}", "log_tail": tail}
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def measure_from_spec(spec_path: str) -> None:
    """The ``measure-one`` helper command: run :func:`measure_system` from a spec file."""
    spec = json.loads(Path(spec_path).read_text())
    result = measure_system(
        CASES[spec["case"]],
        spec["system"],
        Dataset(**spec["dataset"]),
        Dataset(**spec["warmup"]),
        spec["repeats"],
        Path(spec["work_dir"]),
    )
    Path(spec["result"]).write_text(json.dumps(result, indent=2))


def _print_line(name: str, size_bytes: int, system: str, r: dict[str, Any]) -> None:
    where = f"{name} {size_label(size_bytes)} {system}"
    if "error" in r:
        print(f"  {where}: FAILED ({r['error']})", flush=True)
        for line in r.get("log_tail", []):
            print(f"      {line}", flush=True)
        return
    print(
        f"  {where}: {r['mb_per_s']:.1f} MB/s (median of {r['repeats']}, "
        f"{r['mb_per_s_min']:.1f}-{r['mb_per_s_max']:.1f}), peak {r['peak_memory_mb']:.0f} MB "
        f"(store {r['peak_object_store_mb']:.0f} MB), {r['cpu_s_per_gb']:.1f} CPU s/GB, "
        f"other processes took up to {r['other_cpu_share_max']:.0%} of the CPU",
        flush=True,
    )


@dataclass(frozen=True)
class Scale:
    """How much one mode of the family measures."""

    sizes: tuple[int, ...]
    repeats: int
    systems: tuple[str, ...]
    isolate: bool
    """Each (case, size, system) in its own ``measure-one`` process (else in this process)."""


SCALES: dict[Mode, Scale] = {
    "full": Scale(FULL_SIZES, REPEATS, tuple(SYSTEMS), isolate=True),
    "quick": Scale(QUICK_SIZES, REPEATS, tuple(SYSTEMS), isolate=True),
    # the plumbing check: no Ray Data (its import alone takes seconds), in this process
    "tiny": Scale((3_000_000,), 1, ("pyarrow", "headrace"), isolate=False),
}


def measure_cases(
    names: Sequence[str], scale: Scale, data_dir: Path | None = None, keep_data: bool = False
) -> list[dict[str, Any]]:
    """Each case of ``names`` at every size of ``scale``; one result per (case, size).

    Unless ``keep_data``, a dataset of :data:`LARGE_DATASET_BYTES` or more is deleted as soon as it
    has been measured, so the disk holds at most one large input (and its outputs) at a time.
    """
    results = []
    for name in names:
        for size in scale.sizes:
            print(f"{name} at {size_label(size)} ({scale.repeats} repeats)", flush=True)
            result = run_case(
                name, size, scale.repeats, scale.systems, data_dir=data_dir, isolate=scale.isolate
            )
            results.append(result)
            if not keep_data and size >= LARGE_DATASET_BYTES:
                shutil.rmtree(result["dataset"]["path"], ignore_errors=True)
    return results


def run_family(options: RunOptions, cases: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``cases`` (none: every case) in the options' mode; write ``<date>-streaming[-mode][-cases]``
    ``.json`` (and ``latest.json``), ``latest.md``, ``throughput.png`` and ``memory.png``; returns the
    results document."""
    from benchmarks.harness import machine_info, print_targets, write_results
    from benchmarks.report import evaluate_targets, render_markdown, render_plots

    began = time.perf_counter()
    machine = machine_info()
    if options.gate is not None:
        machine["load_gate"] = options.gate
    names = [c for c in CASES if c in cases] if cases else list(CASES)
    try:
        results = measure_cases(names, SCALES[options.mode], options.data_dir, options.keep_data)
    finally:
        if not options.keep_data:
            for path in remove_large_datasets(LARGE_DATASET_BYTES, options.data_dir):
                print(f"removed generated data {path}", flush=True)
    name = "-".join(
        ["streaming"] + ([options.mode] if options.mode != "full" else []) + (names if cases else [])
    )
    doc: dict[str, Any] = {
        "family": "streaming transform",
        "name": name,
        "mode": options.mode,
        "command": options.command,
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "method": {
            "mb_per_s": "input bytes on disk / wall seconds; median of the repeats",
            "peak_memory_mb": "max over 10 Hz samples of anonymous RSS summed over the driver's process tree "
            "+ growth of /proc/meminfo Shmem (object store pages) since before ray.init",
            "isolation": "each (case, size, system) in its own Python process and Ray session; "
            "one untimed warm-up run per system; ray.init not timed",
            "headrace": "in-process: engine.check.check_file + engine.runtime.run_checked(progress=False) "
            "inside the harness's Ray session",
        },
        "results": results,
    }
    if not SCALES[options.mode].isolate:
        doc["method"]["isolation"] = "every system in this process and its Ray session (tiny mode)"
    doc["targets"] = evaluate_targets(results)
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    folder = options.results_dir
    files = write_results(doc, name, folder)
    (folder / "latest.md").write_text(render_markdown(doc))
    plots = render_plots(doc, folder)
    print(f"results: {files.json} (and {files.latest_json}, {folder / 'latest.md'})")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    print_targets(doc)
    return doc
