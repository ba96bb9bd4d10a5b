"""What the streaming family's CSV job costs with no engine around it: its parts, one process, per stage.

    python -m benchmarks.floor [--size 1e9] [--repeats 5]

The ``csv_sql`` case (CSV -> SQL filter and projection -> Parquet) on the streaming family's dataset, run
by headrace's own parts in one process, with no Ray, no scheduling and no records: the planner's splits,
``read_csv``'s split reader, the ``sql`` node's DuckDB function and ``write_parquet``'s part writer,
one split after another, as a split task runs them. The process's CPU time (all its threads) is
taken per stage. A second mode writes without compression, to show what the codec costs. Modes
alternate repeat by repeat, so drift on a shared machine falls on both.

The result is a floor for the engine: a run on N cores cannot go faster than N / (CPU-s per GB of this
work) GB/s unless the work itself gets cheaper. Writes ``benchmarks/results/<date>-csv-floor.json``
and ``.md``; the README's streaming section quotes it next to the streaming family's own figures.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data import DATA_DIR, ensure_dataset  # noqa: E402
from benchmarks.harness import RESULTS_DIR, machine_info, sync_disks, write_json  # noqa: E402
from benchmarks.streaming import CASES  # noqa: E402
from benchmarks.systems import BATCH_ROWS  # noqa: E402
from connectors.readers import CSV  # noqa: E402
from connectors.sinks import WriteParquet  # noqa: E402
from connectors.sources import ReadCsv  # noqa: E402
from connectors.writers import open_part  # noqa: E402
from engine.runtime.allocator import keep_freed_memory  # noqa: E402
from operators.batch import batch_fn  # noqa: E402
from operators.transforms import Sql  # noqa: E402

STAGES = ("plan", "read", "sql", "write")
WARMUP_BYTES = 16_000_000
MODES = {"as configured": "snappy", "no compression": "none"}
"""Each mode's ``write_parquet`` compression (the sink's default, and none)."""


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _empty(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def run_once(files: list[str], query: str, out: Path, compression: str) -> dict[str, float]:
    """One pass over the input: CPU seconds per stage, wall seconds and rows written."""
    source = ReadCsv.model_validate({"op": "read_csv", "path": files})
    sink = WriteParquet.model_validate(
        {"op": "write_parquet", "path": str(out), "input": "transform", "compression": compression}
    )
    reader = CSV
    transform = batch_fn(Sql(op="sql", input="input", query=query))
    cpu = dict.fromkeys(STAGES, 0.0)
    rows = 0
    began, start = time.perf_counter(), _cpu()
    splits = reader.splits(source, "input", files)
    cpu["plan"] = _cpu() - start
    for split in splits:
        part = open_part(sink, str(out), split.index, f"s{split.index}")
        batches = reader.read(source, split, BATCH_ROWS)
        while True:
            t0 = _cpu()
            batch = next(batches, None)
            t1 = _cpu()
            cpu["read"] += t1 - t0
            if batch is None:
                break
            table = transform(batch)
            t2 = _cpu()
            part.write(table)
            cpu["sql"] += t2 - t1
            cpu["write"] += _cpu() - t2
        t3 = _cpu()
        rows += part.commit().rows
        cpu["write"] += _cpu() - t3
    return {**cpu, "wall": time.perf_counter() - began, "rows": rows}


def measure(size: float, repeats: int, command: str, data_dir: Path | None = None) -> dict[str, Any]:
    """Run every mode ``repeats`` times, alternating, and summarise per mode (medians, min and max)."""
    keep_freed_memory()  # as split tasks do
    dataset = ensure_dataset("csv", int(size), data_dir)
    warmup = ensure_dataset("csv", WARMUP_BYTES, data_dir)
    files = list(dataset.files)
    for path in files:  # read from the page cache, as the streaming family does after its warm-up
        with open(path, "rb") as fh:
            while fh.read(64 << 20):
                pass
    gb = dataset.bytes / 1e9
    query = CASES["csv_sql"].query
    work = Path(tempfile.mkdtemp(prefix="headrace-floor-"))
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        for mode in MODES:  # untimed: imports, DuckDB's database, the allocator's first pages
            run_once(list(warmup.files), query, _empty(work / "out"), MODES[mode])
        order = list(MODES)
        for i in range(repeats):
            for mode in order if i % 2 == 0 else order[::-1]:
                out = _empty(work / "out")
                sync_disks()
                runs[mode].append(run_once(files, query, out, MODES[mode]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    modes = {}
    for mode, results in runs.items():
        totals = [sum(r[s] for s in STAGES) / gb for r in results]
        modes[mode] = {
            "compression": MODES[mode],
            "cpu_s_per_gb": round(statistics.median(totals), 3),
            "cpu_s_per_gb_min": round(min(totals), 3),
            "cpu_s_per_gb_max": round(max(totals), 3),
            "stages_cpu_s_per_gb": {
                s: round(statistics.median(r[s] / gb for r in results), 3) for s in STAGES
            },
            "wall_mb_per_s": round(statistics.median(dataset.bytes / 1e6 / r["wall"] for r in results), 1),
            "rows_out": int(results[-1]["rows"]),
        }
    return {
        "family": "csv-floor",
        "command": command,
        "machine": machine_info(),
        "dataset": dataset.as_dict(),
        "query": query,
        "batch_rows": BATCH_ROWS,
        "repeats": repeats,
        "modes": modes,
    }


def render(doc: dict[str, Any]) -> str:
    """The markdown table of a results document."""
    cores = doc["machine"]["cores"]
    lines = [
        "# CSV -> SQL -> Parquet with no engine: the work itself",
        "",
        f"`{doc['command']}` on {doc['machine']['date'][:10]} "
        f"({cores} cores, {doc['machine']['cpu_model']}): "
        f"the streaming family's csv_sql job on {doc['dataset']['bytes'] / 1e9:.2f} GB, run by headrace's "
        "own split reader, `sql` function and Parquet part writer in one process with no Ray; process CPU "
        f"per stage, median of {doc['repeats']} repeats (min–max of the total). "
        f'"Bound on {cores} cores" is {cores} / total: no engine can go faster on this machine without '
        "making the work cheaper.",
        "",
        "| mode | total CPU-s/GB | plan | read (CSV parse) | sql (DuckDB) | write (Parquet) | "
        f"bound on {cores} cores | one process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in doc["modes"].items():
        s = m["stages_cpu_s_per_gb"]
        lines.append(
            f"| {mode} ({m['compression']}) | {m['cpu_s_per_gb']:.2f} ({m['cpu_s_per_gb_min']:.2f}–"
            f"{m['cpu_s_per_gb_max']:.2f}) | {s['plan']:.2f} | {s['read']:.2f} | {s['sql']:.2f} | "
            f"{s['write']:.2f} | {cores * 1000 / m['cpu_s_per_gb']:.0f} MB/s | "
            f"{m['wall_mb_per_s']:.0f} MB/s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=1e9, help="target input bytes (default 1e9)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where to generate input data")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.floor", *(sys.argv[1:] if argv is None else argv)])
    doc = measure(args.size, args.repeats, command, args.data_dir)
    path = write_json(doc, "csv-floor", args.results_dir)
    text = render(doc)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
