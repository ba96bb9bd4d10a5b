"""``headrace serve``: keep Ray and an engine warm, and serve runs over HTTP (``headrace run`` uses it)."""

from __future__ import annotations

import os

import click

from engine.cli.common import friendly


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback by default)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8537,
    show_default=True,
    help="Port to listen on; 0 picks a free one (the discovery file says which).",
)
@click.option(
    "--address",
    help="Join this Ray cluster (`auto`, `ray://host:10001`); default: start a local Ray.",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(1),
    help="CPUs of the local Ray (default: every CPU of the machine).",
)
@click.option(
    "--max-runs",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Runs in flight at once; more wait in the queue.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="The HTTP server's log level.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The service's configuration (YAML or JSON): its policy, tenants' quotas.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Serve HTTPS with this PEM certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The PEM private key of --tls-cert.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain HTTP beyond loopback (only behind a proxy that terminates TLS).",
)
@friendly
def serve(
    host: str,
    port: int,
    address: str | None,
    num_cpus: int | None,
    max_runs: int,
    log_level: str,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    config_path: str | None,
) -> None:
    """Run a warm engine: Ray, the shared services and an Engine, with an HTTP API under /v1.

    It writes $HEADRACE_HOME/engine.json (URL, pid, start time and a random bearer token; mode 0600),
    through which `headrace run` finds it, and removes it when it stops. SIGTERM or Ctrl-C stops it:
    runs in flight are cancelled and their records say `cancelled`. Beyond loopback it needs TLS
    (--tls-cert and --tls-key) unless --insecure; tokens: `headrace tokens`.
    """
    from engine.logs import configure_logging
    from engine.service.server import ServeOptions
    from engine.service.server import serve as run_server

    if num_cpus is not None:
        os.environ["HEADRACE_NUM_CPUS"] = str(num_cpus)
    configure_logging()
    options = ServeOptions(
        host=host,
        port=port,
        address=address,
        max_concurrent_runs=max_runs,
        log_level=log_level,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure=insecure,
        config=config_path,
    )
    run_server(options, announce=lambda text: click.echo(text, err=True))
