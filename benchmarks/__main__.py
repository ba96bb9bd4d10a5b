"""``python -m benchmarks run [--quick] [--only NAME]...``: every benchmark family in one session.

The families, in the order they run: ``streaming`` (streaming transform against a pyarrow loop, plain
Ray tasks and Ray Data), ``llm`` (LLM steps against the bound N / latency and an asyncio client),
``graphs`` (state graphs against LangGraph), ``concurrency`` (the Engine against raw Ray tasks, and
1,000 concurrent runs against LangGraph) and ``estimate`` (``headrace estimate`` against what runs then
cost, on several shapes of input). Each measures its own baselines in the same run and writes
its JSON, markdown and plots into ``benchmarks/results/``; the session then writes the index of every
family, ``benchmarks/results/latest-summary.md``: the results file each family's figures come from, its
date and machine, and every target next to what was measured, met or not.

``--only`` takes a family's name or a streaming case (``parquet_transform``, ``csv_sql``) and may be
given more than once. ``llm`` and ``graphs`` are shortcuts for ``run --only llm`` and
``run --only graphs --only concurrency``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchmarks.data import DATA_DIR
from benchmarks.harness import RESULTS_DIR, Mode, RunOptions
from benchmarks.session import FAMILIES, ONLY_NAMES, run_session
from benchmarks.streaming import CASES

_QUICK_HELP = (
    "smaller sizes and 3 repeats for every family, sized to finish in under 10 minutes on a quiet "
    "2-core machine: streaming at 0.2 and 1 GB instead of 1, 4 and 10 GB; llm at 200 ms only; "
    "graphs and concurrency with smaller counts; estimate with 3,000 rows a shape instead of 6,000"
)
SHORTCUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "llm": (("llm",), "throughput at 200 ms only (about 3 min); the full run adds 50 ms, 429s and overhead"),
    "graphs": (("graphs", "concurrency"), "smaller counts and 3 repeats (about 1 min)"),
}
"""Subcommands kept from before ``run`` ran every family: each is ``run --only`` these families (and
what ``--quick`` means for them)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of headrace against baselines measured in the same run.",
        epilog="python -m benchmarks run --help lists what a session runs and writes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run every benchmark family (or those --only names) and write the index of results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=_QUICK_HELP)
    # every part of every family once on the smallest input: checks the plumbing, measures nothing
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    run.add_argument(
        "--only",
        action="append",
        choices=ONLY_NAMES,
        default=[],
        metavar="NAME",
        help=f"a family ({', '.join(FAMILIES)}) or a streaming case ({', '.join(CASES)}); "
        "repeat to run several",
    )
    run.add_argument("--keep-data", action="store_true", help="keep generated datasets of 1 GB and more")
    run.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where to generate input data")
    run.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    for name, (families, quick) in SHORTCUTS.items():
        shortcut = commands.add_parser(
            name,
            help=f"the same as: run --only {' --only '.join(families)}",
            description=f"The same as: python -m benchmarks run --only {' --only '.join(families)}.",
        )
        shortcut.add_argument("--quick", action="store_true", help=quick)
        shortcut.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    commands.add_parser("scaling", help="headrace's peak memory at 1 GB and 10 GB of input")
    one = commands.add_parser("measure-one")  # internal: one streaming measurement in its own process
    one.add_argument("spec")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; 1 when a family of the session failed."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = _parser().parse_args(args)
    if opts.command == "measure-one":
        from benchmarks.streaming import measure_from_spec

        measure_from_spec(opts.spec)
        return 0
    if opts.command == "scaling":
        from benchmarks.scaling import run_scaling

        run_scaling()
        return 0
    mode: Mode = "tiny" if getattr(opts, "tiny", False) else "quick" if opts.quick else "full"
    if mode == "tiny" and opts.results_dir.resolve() == RESULTS_DIR.resolve():
        print("--tiny figures mean nothing: pass a --results-dir outside benchmarks/results", file=sys.stderr)
        return 2
    options = RunOptions(
        mode=mode,
        results_dir=opts.results_dir,
        command=shlex.join(["python", "-m", "benchmarks", *args]),
        data_dir=getattr(opts, "data_dir", None),
        keep_data=getattr(opts, "keep_data", False),
    )
    only = opts.only if opts.command == "run" else SHORTCUTS[opts.command][0]
    session = run_session(options, only)
    return 1 if session.failed else 0


if __name__ == "__main__":
    sys.exit(main())
