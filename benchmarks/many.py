"""The "many" family: many small file pipelines at once, through one warm ``Engine``.

Cases (each in its own Ray session, measured with the harness's process-tree memory sampler):

- ``many_llm``: N small pipelines (a CSV of R rows → ``llm_classify`` on the ``offline`` provider →
  Parquet), at each concurrency of the sweep (e.g. 10 and 100 at once), through one Engine: pipelines/s
  and peak process-tree memory per concurrency (memory should stay flat as concurrency grows).
- ``many_sql``: N small CSV → ``sql`` → Parquet pipelines at the top concurrency.

Baselines, measured in the same run: the same pipelines as concurrent Ray Data jobs from one driver
(one thread per job in flight, at the same concurrency), and a few sequential ``headrace run``
processes (each starts its own Ray), whose rate is extrapolated to N (it is linear: one after another).

Every case is a :class:`Case` in :data:`CASES`; a new case is one function and one entry (see
``/work/notes/many-family.md`` or the :func:`case` decorator). ``python -m benchmarks run --only many``
runs them all; ``--only many_llm`` one.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, MemorySampler, Mode, RunOptions, ray_running, shmem_bytes

_MB = 1e6


@dataclass(frozen=True)
class Sizes:
    """How much each case does."""

    pipelines: int
    """Pipelines per measurement."""
    concurrency: tuple[int, ...]
    """Pipelines at once, swept (the last is the headline)."""
    rows: int
    """Rows of each pipeline's CSV."""
    sequential: int
    """``headrace run`` processes timed one after another (the rate is extrapolated)."""
    baselines: bool = True
    """Measure Ray Data and sequential ``headrace run`` too."""


FULL = Sizes(pipelines=300, concurrency=(10, 100), rows=50, sequential=3)
QUICK = Sizes(pipelines=100, concurrency=(10, 100), rows=50, sequential=2)
TINY = Sizes(pipelines=4, concurrency=(2,), rows=10, sequential=1, baselines=False)
SCALES: dict[Mode, Sizes] = {"full": FULL, "quick": QUICK, "tiny": TINY}


@dataclass(frozen=True)
class Case:
    """One case of the family: ``measure(sizes, work_dir)`` returns its figures; ``targets(figures)``
    lists (target, measured, met) rows (met None: not measured)."""

    name: str
    title: str
    measure: Callable[[Sizes, Path], dict[str, Any]]
    targets: Callable[[dict[str, Any]], list[tuple[str, str, bool | None]]]


CASES: dict[str, Case] = {}
"""Every case, in the order the family runs them."""


def case(
    name: str, title: str, targets: Callable[[dict[str, Any]], list[tuple[str, str, bool | None]]]
) -> Callable[[Callable[[Sizes, Path], dict[str, Any]]], Callable[[Sizes, Path], dict[str, Any]]]:
    """Register a case measured by the decorated function."""

    def register(fn: Callable[[Sizes, Path], dict[str, Any]]) -> Callable[[Sizes, Path], dict[str, Any]]:
        CASES[name] = Case(name, title, fn, targets)
        return fn

    return register


# --- pipelines -----------------------------------------------------------------------------------------

_LLM = """version: 1
name: many-llm-{i}
nodes:
  input: {{op: read_csv, path: {csv}, column_types: {{id: int64, text: string}}}}
  classify:
    op: llm_classify
    input: input
    provider: offline
    prompt: "Which kind of message is this? {{{{ text }}}}"
    labels: [bug, billing, feature_request, other]
    output: label
    max_tokens: 16
  output: {{op: write_parquet, input: classify, path: {out}, overwrite: true}}
"""

_SQL = """version: 1
name: many-sql-{i}
nodes:
  input: {{op: read_csv, path: {csv}, column_types: {{id: int64, text: string}}}}
  shape: {{op: sql, input: input, query: "SELECT id, upper(text) AS text, length(text) AS n FROM batch"}}
  output: {{op: write_parquet, input: shape, path: {out}, overwrite: true}}
"""

_WORDS = ["refund", "crash", "invoice", "export", "login", "dark mode", "charged twice", "slow", "api"]


def write_pipelines(work: Path, kind: str, count: int, rows: int) -> list[Path]:
    """``count`` pipeline files of ``kind`` (``llm`` or ``sql``), each with its own CSV of ``rows``."""
    template = _LLM if kind == "llm" else _SQL
    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        data = folder / f"in-{i}.csv"
        with data.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "text"])
            for r in range(rows):
                writer.writerow([r, f"message {i}-{r}: {_WORDS[(i + r) % len(_WORDS)]} please"])
        path = folder / f"p-{i}.yaml"
        path.write_text(template.format(i=i, csv=data, out=folder / f"out-{i}"), encoding="utf-8")
        paths.append(path)
    return paths


# --- systems -------------------------------------------------------------------------------------------


def _sampled(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``fn`` and the memory and CPU figures of the process tree while it ran."""
    with MemorySampler(shmem_bytes(), interval=0.1) as sampler:
        began = time.perf_counter()
        fn()
        wall = time.perf_counter() - began
    return wall, sampler.peaks.as_dict()


def engine_rate(paths: list[Path], concurrency: int) -> dict[str, Any]:
    """The pipelines through one Engine, ``concurrency`` at once, in a fresh Ray session; one warm-up
    pipeline first (Ray's start and the shared services' first start are not timed)."""
    from engine import Engine

    with ray_running(), Engine(max_concurrent_runs=concurrency) as engine:
        warm = engine.run(str(paths[0]), cache=False)
        assert warm.status == "succeeded", warm.error

        def go() -> None:
            handles = [engine.submit(str(p), cache=False) for p in paths]
            statuses = [h.result(timeout=3600).status for h in handles]
            assert all(s == "succeeded" for s in statuses), statuses

        wall, memory = _sampled(go)
    return {
        "pipelines": len(paths),
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "per_s": round(len(paths) / wall, 1),
        **memory,
    }


def _ray_data_llm(batch: Any) -> Any:
    """The offline provider's label for each row, as Ray Data's map function (the same labelling work
    as headrace's ``offline`` provider: one hash per row)."""
    import hashlib

    labels = ["bug", "billing", "feature_request", "other"]
    texts = batch["text"]
    batch["label"] = [labels[hashlib.sha256(str(t).encode()).digest()[0] % 4] for t in texts]
    return batch


def _ray_data_sql(batch: Any) -> Any:
    import duckdb

    relation = duckdb.sql("SELECT id, upper(text) AS text, length(text) AS n FROM batch")
    assert relation is not None
    return relation.arrow()


def ray_data_rate(kind: str, paths: list[Path], concurrency: int) -> dict[str, Any]:
    """The same pipelines as Ray Data jobs from one driver, ``concurrency`` in flight (one thread each)."""
    import ray.data

    fn = _ray_data_llm if kind == "llm" else _ray_data_sql
    fmt = "pandas" if kind == "llm" else "pyarrow"
    with ray_running():
        ray.data.DataContext.get_current().enable_progress_bars = False

        def job(path: Path) -> None:
            folder = path.parent
            i = path.stem.split("-")[1]
            ds = ray.data.read_csv(str(folder / f"in-{i}.csv"))
            ds.map_batches(fn, batch_format=fmt).write_parquet(str(folder / f"rd-out-{i}"))

        job(paths[0])  # warm-up

        def go() -> None:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(job, paths))

        wall, memory = _sampled(go)
    return {
        "pipelines": len(paths),
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "per_s": round(len(paths) / wall, 2),
        **memory,
    }


def sequential_rate(paths: list[Path], count: int) -> dict[str, Any]:
    """``count`` ``headrace run`` processes one after another (each starts its own Ray); the rate
    extrapolates to any number of pipelines, since they run one at a time."""
    command = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())", "run"]
    help_text = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False).stdout
    private = ["--no-engine"] if "--no-engine" in help_text else []  # never a warm server's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def go() -> None:
        for path in paths[:count]:
            subprocess.run(
                [*command, str(path), *private, "--no-cache"],
                check=True,
                env=env,
                capture_output=True,
                timeout=600,
            )

    wall, memory = _sampled(go)
    return {
        "pipelines": count,
        "seconds": round(wall, 2),
        "per_s": round(count / wall, 3),
        "seconds_each": round(wall / count, 2),
        "extrapolated": True,
        **memory,
    }


# --- cases ---------------------------------------------------------------------------------------------


def _llm_targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    top = r["headrace"][-1]
    peaks = [x["peak_memory_mb"] for x in r["headrace"]]
    flat = max(peaks) <= 1.25 * min(peaks) + 100
    return [
        (
            f"{top['pipelines']} small LLM pipelines, {top['concurrency']} at once: ≥ 50 pipelines/s",
            f"{top['per_s']:g}/s",
            top["per_s"] >= 50,
        ),
        ("peak process-tree memory ≤ 2.5 GB", f"{max(peaks):,.0f} MB", max(peaks) <= 2500),
        (
            f"memory flat from concurrency {r['headrace'][0]['concurrency']} to {top['concurrency']}",
            " → ".join(f"{p:,.0f}" for p in peaks) + " MB",
            flat,
        ),
    ]


@case("many_llm", "small LLM pipelines (CSV → llm_classify offline → Parquet)", _llm_targets)
def measure_llm(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The LLM pipelines through one Engine at each concurrency, then the baselines."""
    paths = write_pipelines(work, "llm", sizes.pipelines, sizes.rows)
    result: dict[str, Any] = {"headrace": [engine_rate(paths, c) for c in sizes.concurrency]}
    if sizes.baselines:
        result["ray_data"] = ray_data_rate("llm", paths, sizes.concurrency[-1])
        result["headrace_run_sequential"] = sequential_rate(paths, sizes.sequential)
    return result


def _sql_targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    top = r["headrace"][-1]
    return [
        (
            f"{top['pipelines']} CSV → SQL → Parquet pipelines, {top['concurrency']} at once: ≥ 100/s",
            f"{top['per_s']:g}/s",
            top["per_s"] >= 100,
        ),
        (
            "peak process-tree memory ≤ 2.5 GB",
            f"{top['peak_memory_mb']:,.0f} MB",
            top["peak_memory_mb"] <= 2500,
        ),
    ]


@case("many_sql", "small CSV → SQL → Parquet pipelines", _sql_targets)
def measure_sql(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The SQL pipelines through one Engine at the top concurrency, then the baselines."""
    paths = write_pipelines(work, "sql", sizes.pipelines, sizes.rows)
    result: dict[str, Any] = {"headrace": [engine_rate(paths, sizes.concurrency[-1])]}
    if sizes.baselines:
        result["ray_data"] = ray_data_rate("sql", paths, sizes.concurrency[-1])
        result["headrace_run_sequential"] = sequential_rate(paths, sizes.sequential)
    return result


# --- the family ----------------------------------------------------------------------------------------


def run_family(options: RunOptions, cases: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the selected cases (none: all); write ``<date>-many[-mode].json`` and ``latest-many.md``."""
    from benchmarks.graphs import judged, measure_family
    from benchmarks.harness import print_targets, write_json

    began = time.perf_counter()
    sizes = SCALES[options.mode]
    chosen = [CASES[c] for c in (cases or tuple(CASES))]
    work = Path(tempfile.mkdtemp(prefix="headrace-many-"))
    os.environ.setdefault("HEADRACE_HOME", str(work / "home"))  # run records away from the user's
    print(f"many: {', '.join(c.name for c in chosen)} ({options.mode})", flush=True)

    def measure() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in chosen:
            t = time.perf_counter()
            out[c.name] = c.measure(sizes, work)
            print(f"  {c.name}: {time.perf_counter() - t:.1f} s", flush=True)
        return out

    try:
        doc = measure_family(options, "many", "many", __doc__ or "", measure)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [row for c in chosen for row in c.targets(doc["results"][c.name])]
    doc |= {"sizes": asdict(sizes), "targets": judged(rows), "cases": {c.name: c.title for c in chosen}}
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    path = write_json(doc, doc["name"], options.results_dir)
    (options.results_dir / "latest-many.md").write_text(render_markdown(doc))
    print(f"results: {path} (and {options.results_dir / 'latest-many.md'})")
    print_targets(doc)
    return doc


def _row(system: str, r: dict[str, Any]) -> str:
    extra = " (extrapolated: one after another)" if r.get("extrapolated") else ""
    return (
        f"| {system}{extra} | {r['pipelines']} | {r.get('concurrency', 1)} | {r['seconds']:g} | "
        f"{r['per_s']:g} | {r['peak_memory_mb']:,.0f} | {r['other_cpu_share']:.0%} |"
    )


def render_markdown(doc: dict[str, Any]) -> str:
    """Every case's systems side by side, the targets, and the machine's load."""
    m = doc["machine"]
    lines = [
        f"# many small pipelines ({doc['mode']})",
        "",
        f"{m['date']} on {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB; load average at "
        f"start {m['load_average_at_start']}, at end {doc['load_average_at_end']}; other processes took "
        f"{doc['others_cpu_share']:.0%} of the CPU over the family. Command: `{doc['command']}`.",
        "",
    ]
    for name, title in doc["cases"].items():
        r = doc["results"][name]
        lines += [
            f"## {title}",
            "",
            "| system | pipelines | at once | seconds | pipelines/s | peak MB | others' CPU |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [_row("headrace Engine", x) for x in r["headrace"]]
        if "ray_data" in r:
            lines.append(_row("Ray Data jobs, one driver", r["ray_data"]))
        if "headrace_run_sequential" in r:
            lines.append(_row("`headrace run` processes", r["headrace_run_sequential"]))
        lines.append("")
    lines += ["## Targets", "", "| target | measured | status |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in doc["targets"]]
    return "\n".join(lines) + "\n"


import benchmarks.many_serve  # noqa: E402, F401  (registers the many_serve case; it imports from here)

if __name__ == "__main__":  # a quick look without the session: python -m benchmarks.many [tiny|quick]
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    run_family(RunOptions(mode=mode, results_dir=Path(tempfile.mkdtemp())))  # type: ignore[arg-type]
