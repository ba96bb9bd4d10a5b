"""What every ``headrace`` command shares: error handling (messages and exit codes, never a traceback)
and the ``--set`` option. Commands import these from here; :mod:`engine.cli.main` assembles the group.

Exit codes: 0 success; 1 invalid pipeline or input; 2 wrong command-line usage; 3 the run failed;
4 the run stopped at a budget; 5 ``bench`` found a regression against its baseline; 70 an internal
error (a bug: please report it); 128 + N stopped by signal N (130: Ctrl-C, 143: SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from engine.errors import ConfigError, HeadraceError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def friendly(fn: F) -> F:
    """Turn headrace errors into their messages and exit codes, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for diag in exc.diagnostics:
                click.echo(diag.format(), err=True)
            sys.exit(exc.exit_code)
        except HeadraceError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            number = int(getattr(exc, "signal_number", 2))  # engine.runtime.stopping.Terminated: 15
            click.echo("interrupted" if number == 2 else "stopped by SIGTERM", err=True)
            sys.exit(128 + number)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("HEADRACE_DEBUG"):
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc} (this is a bug in headrace; "
                "set HEADRACE_DEBUG=1 for the traceback and please report it)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field before validation, e.g. --set nodes.input.path=data/x.csv (repeatable).",
)
