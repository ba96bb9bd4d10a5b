"""``headrace bench``: run a pipeline repeatedly on a warm engine and report its throughput, memory and
LLM figures per variant, with baselines that let CI catch a regression (exit 5).

Where runs go follows ``headrace run``: ``--engine URL`` (or ``HEADRACE_ENGINE``, or a running ``headrace
serve`` found by discovery) sends them to a warm engine; ``--address`` to a Ray cluster, with figures per
machine; otherwise an engine in this process on a private Ray, started once for every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from engine.cli.common import friendly, set_option

if TYPE_CHECKING:
    from engine.bench.runners import Runner


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@set_option
@click.option(
    "--repeats", type=click.IntRange(1, 1000), default=3, show_default=True, help="Measured runs per variant."
)
@click.option(
    "--warmup",
    type=click.IntRange(0, 100),
    default=1,
    show_default=True,
    help="Untimed runs per variant first.",
)
@click.option(
    "--vary",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Run a variant per value of this --set key (repeatable: every combination of the values).",
)
@click.option(
    "--input-size",
    metavar="SIZE",
    help="Build an input of about SIZE (1GB, 200MB, 64KiB) from each source's own rows, repeated or "
    "sampled into a scratch file, and run on it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
@click.option(
    "-o",
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report.",
)
@click.option(
    "--save-baseline", metavar="NAME", help="Store the figures as baseline NAME under $HEADRACE_HOME."
)
@click.option("--baseline", metavar="NAME", help="Compare with baseline NAME; exit 5 on a regression.")
@click.option(
    "--max-regression",
    metavar="PERCENT",
    default="10%",
    show_default=True,
    help="How much worse a median may be than the baseline's (wall time, input MB/s, rows/s).",
)
@click.option(
    "--keep-outputs", is_flag=True, help="Write outputs where the pipeline says, not to a scratch folder."
)
@click.option(
    "--scratch",
    type=click.Path(file_okay=False),
    help="Folder for scratch inputs and outputs (default: a temporary one, removed at the end).",
)
@click.option(
    "--reruns",
    type=click.IntRange(0, 100),
    default=2,
    show_default=True,
    help="How many repeats disturbed by other processes (over 20% of the CPU) are run again per variant.",
)
@click.option("--cache", is_flag=True, help="Use the LLM response cache (default: off, every row is asked).")
@click.option("--address", help="Ray cluster address (`auto`, `ray://host:10001`): figures per machine too.")
@click.option(
    "--engine",
    "engine_url",
    metavar="URL",
    help="Run on the warm engine at URL (`headrace serve`); default: $HEADRACE_ENGINE, else a "
    "discovered one.",
)
@click.option(
    "--no-engine", is_flag=True, help="Run on a private Ray in this process even when an engine runs."
)
@friendly
def bench(
    path: str,
    overrides: tuple[str, ...],
    repeats: int,
    warmup: int,
    vary: tuple[str, ...],
    input_size: str | None,
    as_json: bool,
    report_path: str | None,
    save_baseline: str | None,
    baseline: str | None,
    max_regression: str,
    keep_outputs: bool,
    scratch: str | None,
    reruns: int,
    cache: bool,
    address: str | None,
    engine_url: str | None,
    no_engine: bool,
) -> None:
    """Benchmark a pipeline: every variant (the combinations of --vary) runs --warmup times untimed, then
    --repeats times measured, each run writing to a scratch folder.

    Per variant, the median and min-max over repeats of: wall time, input MB/s and rows/s, each node's
    rows/s and seconds, CPU-seconds per GB of the process tree, peak memory of the tree and the object
    store, and for LLM nodes requests/s, tokens/s, cost per 1,000 rows, the share of the configured rate
    limit reached and retries. A repeat during which other processes took more than 20% of the CPU is run
    again (at most --reruns times). Exits 5 when --baseline finds a regression.
    """
    from engine.bench import baseline as baselines
    from engine.bench.inputs import parse_size
    from engine.bench.pipeline import inspect_pipeline
    from engine.bench.session import BenchRequest, parse_vary, run_bench
    from engine.bench.table import render_table
    from engine.errors import HeadraceError

    try:
        varied = tuple(parse_vary(v) for v in vary)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--vary") from None
    try:
        size = parse_size(input_size) if input_size is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-size") from None
    try:
        allowed = baselines.parse_share(max_regression)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-regression") from None
    # a missing baseline is refused before anything runs
    previous = baselines.load_baseline(baseline) if baseline else None
    request = BenchRequest(
        path=path,
        sets=overrides,
        vary=varied,
        repeats=repeats,
        warmup=warmup,
        input_size=size,
        keep_outputs=keep_outputs,
        scratch=os.path.abspath(scratch) if scratch else None,
        cache=cache,
        extra_repeats=reruns,
        command=["headrace", *sys.argv[1:]],
    )

    def say(line: str) -> None:
        if not as_json:
            click.echo(line, err=True)

    # With --json, stdout carries exactly one JSON object (Ray forwards workers' lines to stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            inspect_pipeline(path, overrides)  # an invalid file is refused, located, before Ray starts
            runner = _runner(address, engine_url, no_engine, cache)
            try:
                doc = run_bench(request, runner, say=say)
            finally:
                runner.close()
    except HeadraceError as exc:
        if as_json:  # the message and exit status are the CLI's usual ones; stdout still has its object
            click.echo(json.dumps({"path": path, "error": str(exc), "exit_code": exc.exit_code}))
        raise
    doc["machine_kind"] = baselines.machine_kind(doc["machine"], doc["where"])
    doc["baseline"] = baselines.compare(doc, previous, allowed) if previous is not None else None
    regressed = bool(doc["baseline"] and doc["baseline"]["regressions"])
    doc["exit_code"] = baselines.EXIT_REGRESSION if regressed else 0
    if save_baseline:
        saved = baselines.save_baseline(save_baseline, doc)
        doc["saved_baseline"] = str(saved)
    if report_path:
        from engine.bench.report import render_bench_report

        with open(report_path, "w", encoding="utf-8") as fh:
            fh.write(render_bench_report(doc))
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(render_table(doc))
        if save_baseline:
            click.echo(f"saved baseline {save_baseline}: {doc['saved_baseline']}")
        if report_path:
            click.echo(f"report: {report_path}")
    sys.exit(doc["exit_code"])


def _runner(address: str | None, engine_url: str | None, no_engine: bool, cache: bool) -> Runner:
    """Where runs go, by ``headrace run``'s rules."""
    from engine.bench.runners import LocalRunner, ServedRunner

    if no_engine and engine_url:
        raise click.UsageError("give --engine or --no-engine, not both")
    if address and engine_url:
        raise click.UsageError("--address runs on a cluster from this process, not with --engine")
    if not (no_engine or address):
        from engine.service.client import find_engine

        target = find_engine(engine_url or os.environ.get("HEADRACE_ENGINE") or None)
        if target is not None:
            return ServedRunner(target, cache=cache)
    return LocalRunner(address, cache=cache)
