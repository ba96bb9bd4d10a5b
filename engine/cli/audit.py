"""``headrace audit``: check and read the hash-chained audit log of runs."""

from __future__ import annotations

import json
import sys

import click

from engine.audit import AuditLog
from engine.cli.common import friendly


@click.group()
def audit() -> None:
    """The audit log of runs: who ran what, on which inputs, at what cost (hash-chained)."""


_LOG = click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    help="The audit log (default: HEADRACE_AUDIT_LOG, else $HEADRACE_HOME/audit.jsonl).",
)


@audit.command()
@_LOG
@click.option("--expect-head", metavar="HASH", help="The last hash recorded elsewhere (see `audit head`).")
@friendly
def verify(log_path: str | None, expect_head: str | None) -> None:
    """Check the chain; exit 1 naming every line where it breaks."""
    log = AuditLog(log_path)
    problems = log.verify(expect_head)
    for p in problems:
        click.echo(f"{log.path}:{p.line}: error: {p.message}", err=True)
    if problems:
        sys.exit(1)
    count = sum(1 for _ in log.entries())
    click.echo(f"{log.path}: {count} entries, chain intact, head {log.head()}")


@audit.command()
@_LOG
@friendly
def head(log_path: str | None) -> None:
    """Print the hash of the last entry, to keep somewhere the log's writers cannot edit."""
    click.echo(AuditLog(log_path).head())


@audit.command()
@_LOG
@click.option("-n", "count", type=int, default=20, show_default=True, help="How many entries, newest last.")
@friendly
def show(log_path: str | None, count: int) -> None:
    """Print the last entries as JSON lines."""
    entries = list(AuditLog(log_path).entries())
    for entry in entries[-count:] if count > 0 else []:
        click.echo(json.dumps(entry, ensure_ascii=False, sort_keys=True))
