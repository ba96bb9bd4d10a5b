"""``python -m benchmarks run [--quick] [--only NAME]``: measure, write results, render the report.

``python -m benchmarks llm [--quick]`` runs the LLM-steps family (``benchmarks/llm.py``);
``python -m benchmarks graphs [--quick]`` state graphs and concurrency (``benchmarks/graphs.py``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.data import DATA_DIR, LARGE_DATASET_BYTES, remove_large_datasets
from benchmarks.harness import RESULTS_DIR, machine_info, write_results
from benchmarks.streaming import CASES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the streaming-transform benchmarks")
    run.add_argument("--quick", action="store_true", help="sizes 0.2 and 0.5 GB instead of 1, 4 and 10 GB")
    run.add_argument("--only", choices=sorted(CASES), metavar="NAME", help=f"one case: {', '.join(CASES)}")
    run.add_argument("--keep-data", action="store_true", help="keep generated datasets of 1 GB and more")
    run.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where to generate input data")
    run.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    commands.add_parser("scaling", help="headrace's peak memory at 1 GB and 10 GB of input")
    one = commands.add_parser("measure-one", help=argparse.SUPPRESS)
    one.add_argument("spec")
    llm = commands.add_parser("llm", help="LLM steps: rows/s against the bound N / latency, and a baseline")
    llm.add_argument(
        "--quick",
        action="store_true",
        help="throughput at 200 ms only (about 3 min); the full run adds 50 ms, 429s and overhead",
    )
    llm.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    graphs = commands.add_parser("graphs", help="state graphs vs LangGraph, the Engine vs raw Ray tasks")
    graphs.add_argument("--quick", action="store_true", help="smaller counts and 3 repeats (about 1 min)")
    graphs.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    return parser


def run(quick: bool, only: str | None, data_dir: Path, results_dir: Path, keep_data: bool) -> dict[str, Any]:
    """Run the family, write the JSON, markdown and plots; returns the results document."""
    from benchmarks.report import evaluate_targets, render_markdown, render_plots
    from benchmarks.streaming import run_family

    began = time.perf_counter()
    machine = machine_info()
    argv = (
        ["python", "-m", "benchmarks", "run"]
        + (["--quick"] if quick else [])
        + (["--only", only] if only else [])
    )
    try:
        results = run_family(quick, only, data_dir, keep_data=keep_data)
    finally:
        if not keep_data:
            for path in remove_large_datasets(LARGE_DATASET_BYTES, data_dir):
                print(f"removed generated data {path}", flush=True)
    name = "streaming" + ("-quick" if quick else "") + (f"-{only}" if only else "")
    doc: dict[str, Any] = {
        "family": "streaming transform",
        "name": name,
        "mode": "quick" if quick else "full",
        "command": shlex.join(argv),
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
    doc["targets"] = evaluate_targets(results)
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    files = write_results(doc, name, results_dir)
    (results_dir / "latest.md").write_text(render_markdown(doc))
    plots = render_plots(doc, results_dir)
    print(f"results: {files.json} (and {files.latest_json}, {results_dir / 'latest.md'})")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    for t in doc["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['measured']}")
    print(f"wall time {doc['wall_seconds']:.0f} s")
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``."""
    args = _parser().parse_args(argv)
    if args.command == "measure-one":
        from benchmarks.streaming import measure_from_spec

        measure_from_spec(args.spec)
        return 0
    if args.command == "llm":
        from benchmarks.llm import run_family as run_llm_family

        run_llm_family(args.quick, args.results_dir)
        return 0
    if args.command == "graphs":
        from benchmarks.graphs import run_family as run_graphs_family

        run_graphs_family(args.quick, args.results_dir)
        return 0
    if args.command == "scaling":
        from benchmarks.scaling import run_scaling

        run_scaling()
        return 0
    run(args.quick, args.only, args.data_dir, args.results_dir, args.keep_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
