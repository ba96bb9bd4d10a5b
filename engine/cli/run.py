"""``headrace run``: validate, compile and run a pipeline, then print its summary.

The run goes to a warm engine (``headrace serve``) when there is one: ``--engine URL`` or
``HEADRACE_ENGINE`` name it, else the discovery file under ``$HEADRACE_HOME`` finds a local one; with
none (or ``--no-engine``) this process starts a private Ray. This module imports only click at the top,
so that a run through an engine starts in a fraction of a second.
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
    from engine.service.client import EngineTarget


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@click.option(
    "--address",
    help="Ray cluster address (`auto`, `ray://host:10001`); default: start a local Ray.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the run's summary.")
@click.option("--run-id", help="Use this run id instead of a generated one.")
@click.option(
    "--resume",
    metavar="RUN_ID",
    help="Continue run RUN_ID of this pipeline (same file and --set values): committed splits are skipped.",
)
@click.option(
    "--input",
    "input_text",
    metavar="JSON|@FILE",
    help="A state graph's input state as JSON, or @file.json (default: the fields' defaults).",
)
@click.option(
    "--checkpoint",
    metavar="URL",
    help="Where a state graph's checkpoints go (sqlite:///runs.db, a folder, s3://...); default: "
    "$HEADRACE_CHECKPOINTS, else runs.db under $HEADRACE_HOME.",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Neither read nor write the LLM response cache (every LLM row is asked afresh, and paid).",
)
@click.option(
    "--trace",
    type=click.Choice(["console", "otlp", "file", "none"]),
    help="Export an OpenTelemetry trace of the run (default: $OTEL_TRACES_EXPORTER, else off); "
    "`otlp` reads the OTEL_EXPORTER_OTLP_* variables, `file` appends JSON lines to $HEADRACE_TRACE_FILE.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics on http://ADDR:PORT/metrics while the run lasts.",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="The address the metrics endpoint binds (loopback by default; 0.0.0.0 for every interface).",
)
@click.option(
    "--engine",
    "engine_url",
    metavar="URL",
    help="Run on the warm engine at URL (`headrace serve`); default: $HEADRACE_ENGINE, else the one the "
    "discovery file under $HEADRACE_HOME names, if it answers.",
)
@click.option(
    "--no-engine",
    is_flag=True,
    help="Start a private Ray in this process even when a warm engine is running.",
)
@friendly
def run(
    path: str,
    overrides: tuple[str, ...],
    address: str | None,
    as_json: bool,
    run_id: str | None,
    resume: str | None,
    input_text: str | None,
    checkpoint: str | None,
    no_cache: bool,
    trace: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    engine_url: str | None,
    no_engine: bool,
) -> None:
    """Validate, compile and run a pipeline: on a warm engine (`headrace serve`) when one is running,
    else on a private Ray started here (or the cluster at --address).

    A state graph (state nodes and edges) runs from --input, checkpointed after every node; `headrace
    runs` lists, resumes, replays and forks its runs. --address, --trace and --metrics-port belong to
    a run in this process: with them the run does not go to an engine found by discovery.
    """
    graph_input = None
    if input_text is not None:
        from engine.cli.runs import parse_json_option

        graph_input = parse_json_option(input_text, "--input")
        if not isinstance(graph_input, dict):
            raise click.BadParameter("give the input state as a JSON object", param_hint="--input")
    target = _engine_target(engine_url, no_engine, address, trace, metrics_port)
    if target is not None:
        from engine.cli.run_remote import run_remote

        sys.exit(
            run_remote(
                target,
                path=path,
                overrides=overrides,
                as_json=as_json,
                run_id=run_id,
                resume=resume,
                graph_input=graph_input,
                checkpoint=checkpoint,
                cache=not no_cache,
            )
        )
    from engine import metrics, telemetry
    from engine.check import check_file
    from engine.compile import compile_pipeline
    from engine.logs import configure_logging, redact, redact_data
    from engine.runtime.engine import Engine

    configure_logging()
    telemetry.configure(trace)
    if metrics_port is not None:
        port = metrics.serve(metrics_port, metrics_addr)
        host = f"[{metrics_addr}]" if ":" in metrics_addr else metrics_addr
        click.echo(f"metrics: http://{host}:{port}/metrics", err=True)
    try:
        content = sys.stdin.buffer.read() if path == "-" else None
        checked = check_file(path, content=content, overrides=overrides)
        # compiled before Ray starts: what the run would refuse is refused here, located, in no time
        compiled = compile_pipeline(checked, cache=not no_cache).raise_errors()
        for warning in compiled.problems:
            click.echo(warning.format(), err=True)
        # The same engine as a long-lived service, for one run. A dataflow's Ray is started here, in the
        # main thread (where Ray installs its signal handlers); a state graph starts Ray only if one of
        # its nodes runs on Ray, so a light graph never pays for it.
        dataflow = compiled.kind == "dataflow"
        if as_json and dataflow and run_id is None and resume is None:
            from engine.runtime import new_run_id

            run_id = new_run_id()  # known here, so that even a refused run's JSON names it
        # With --json, stdout carries exactly one JSON object: whatever else prints to it meanwhile (Ray
        # forwards its workers' and raylets' log lines to the driver's stdout) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            with Engine(address, start_ray=dataflow, max_concurrent_runs=1) as engine:
                summary = engine.run(
                    compiled,
                    graph_input,
                    run_id=run_id,
                    resume=resume,
                    progress=not as_json,
                    cache=not no_cache,
                    checkpoint=checkpoint,
                )
            telemetry.shutdown()  # export what a batching exporter still holds
    except BaseException as exc:
        if as_json and not isinstance(exc, SystemExit | click.exceptions.Exit):
            click.echo(json.dumps(redact_data(_refused(exc, resume or run_id))))
        raise
    if as_json:  # a secret interpolated into a plain field (the name, a path) is not printed
        click.echo(json.dumps(redact_data(summary.as_dict()), indent=None))
    else:
        click.echo(redact(summary.render()))
    sys.exit(summary.exit_code)


def _engine_target(
    engine_url: str | None, no_engine: bool, address: str | None, trace: str | None, metrics_port: int | None
) -> EngineTarget | None:
    """The warm engine this run goes to, or None to run in this process."""
    if no_engine:
        if engine_url:
            raise click.UsageError("give --engine or --no-engine, not both")
        return None
    local = [
        name
        for name, given in (("--address", address), ("--trace", trace), ("--metrics-port", metrics_port))
        if given is not None
    ]
    explicit = engine_url or os.environ.get("HEADRACE_ENGINE") or None
    if local:
        if engine_url:
            raise click.UsageError(f"{', '.join(local)} apply to a run in this process, not with --engine")
        return None  # HEADRACE_ENGINE or discovery: the user asked for this process's features
    from engine.service.client import find_engine

    return find_engine(explicit)


def _refused(exc: BaseException, run_id: str | None) -> dict[str, object]:
    """``--json``'s one object for a run that ended by an exception (refused, interrupted or a bug);
    the exit status and the message on stderr are the CLI's usual ones."""
    from engine.errors import HeadraceError

    if isinstance(exc, KeyboardInterrupt):
        status, code, error = "cancelled", 128 + int(getattr(exc, "signal_number", 2)), "interrupted"
    elif isinstance(exc, HeadraceError):
        status, code, error = "failed", exc.exit_code, str(exc)
    else:
        status, code, error = "failed", 70, f"internal error: {type(exc).__name__}: {exc}"
    return {"run_id": run_id, "status": status, "exit_code": code, "error": error}
