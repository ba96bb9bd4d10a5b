"""The ``headrace`` command: one subcommand per concern.

Exit codes: 0 success; 1 invalid pipeline or input; 2 wrong command-line usage; 3 the run failed;
4 the run stopped at a budget; 5 `bench` found a regression against its baseline; 70 an internal error
(a bug: please report it); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import ClassVar

import click

from engine.cli.common import friendly, set_option
from engine.errors import ConfigError, Diagnostic


class _LazyGroup(click.Group):
    """A group whose heavier subcommands are imported when they are called (or listed in --help), so
    that `headrace run` through a warm engine does not import what `runs` or `estimate` need."""

    lazy: ClassVar[dict[str, str]] = {
        "audit": "engine.cli.audit:audit",
        "bench": "engine.cli.bench:bench",
        "estimate": "engine.cli.estimate:estimate",
        "import": "engine.cli.import_pipeline_ex:import_",
        "run": "engine.cli.run:run",
        "runs": "engine.cli.runs:runs",
        "serve": "engine.cli.serve:serve",
        "tokens": "engine.cli.tokens:tokens",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, name = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="headrace")
def cli() -> None:
    """headrace: streaming data pipelines with LLM steps, on Ray."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="`json` prints one JSON object per file for tools.",
)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@friendly
def validate(paths: tuple[str, ...], overrides: tuple[str, ...], fmt: str, strict: bool) -> None:
    """Check pipeline files; print one line per problem as PATH:LINE:COL: error: MESSAGE.

    Exits 0 when every file is valid, 1 otherwise. A file is compiled as `run` would compile it (no
    Ray), so what `run` refuses before its first row is refused here; a provider's missing API key is
    a warning (the machine that runs may have it), an error with --strict.
    """
    from engine.check import check_file
    from engine.compile import compile_pipeline

    failed = False
    for path in paths:
        diagnostics: list[Diagnostic]
        try:
            content = sys.stdin.buffer.read() if path == "-" else None
            checked = check_file(path, content=content, overrides=overrides)
            diagnostics = list(compile_pipeline(checked, credentials="warning").problems)
        except ConfigError as exc:
            diagnostics = exc.diagnostics
        bad = any(d.severity == "error" or strict for d in diagnostics)
        failed = failed or bad
        if fmt == "json":
            click.echo(
                json.dumps(
                    {
                        "path": path,
                        "valid": not bad,
                        "diagnostics": [d.as_dict() for d in diagnostics],
                    }
                )
            )
        else:
            for diag in diagnostics:
                click.echo(diag.format())
    sys.exit(1 if failed else 0)


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file, not stdout.")
@friendly
def schema(output: str | None) -> None:
    """Print the JSON Schema (draft 2020-12) of the pipeline format."""
    from engine.spec.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    _emit(text, output)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--to", "to", type=click.Choice(["json", "yaml"]), required=True, help="Target format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file, not stdout.")
@friendly
def convert(path: str, to: str, output: str | None) -> None:
    """Convert a pipeline file between YAML and JSON (PATH `-` reads stdin).

    Data round-trips exactly; YAML to YAML keeps comments and key order.
    """
    from engine.spec.convert import convert as run_convert

    content = sys.stdin.buffer.read() if path == "-" else None
    _emit(run_convert(path if path != "-" else "<stdin>", content, to), output)  # type: ignore[arg-type]


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot"]),
    default="mermaid",
    show_default=True,
    help="Mermaid (renders on GitHub) or Graphviz DOT.",
)
@friendly
def graph(path: str, overrides: tuple[str, ...], fmt: str) -> None:
    """Print the pipeline's graph as Mermaid or DOT text (sub-pipelines as clusters)."""
    from engine.check import check_file
    from engine.compile.subpipelines import clusters_of
    from engine.plan.render import render

    content = sys.stdin.buffer.read() if path == "-" else None
    checked = check_file(path, content=content, overrides=overrides)
    groups = checked.loaded.groups
    click.echo(render(checked.plan, fmt, clusters_of(checked), groups), nl=False)  # type: ignore[arg-type]


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the result here.")
@click.option("--in-place", is_flag=True, help="Rewrite PATH itself.")
@friendly
def migrate(path: str, output: str | None, in_place: bool) -> None:
    """Upgrade a pipeline file to the current format, keeping its comments."""
    from engine.spec.migrate_file import migrate_file

    if output and in_place:
        raise click.UsageError("give -o/--output or --in-place, not both")
    text, steps = migrate_file(path)
    if not steps:
        click.echo(f"{path}: already at the current format", err=True)
    for step in steps:
        click.echo(f"{path}: v{step.source} -> v{step.source + 1}: {step.summary}", err=True)
    _emit(text, path if in_place else output)


@cli.command()
@click.argument("template", required=False)
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the templates.")
@click.option("-o", "--output", type=click.Path(), help="File to write (default NAME.yaml).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@friendly
def new(template: str | None, name: str | None, list_: bool, output: str | None, force: bool) -> None:
    """Start a pipeline from a template (`headrace new --list` shows them)."""
    from engine.spec.templates import render_template, templates

    available = templates()
    if list_ or template is None:
        width = max(len(t) for t in available)
        for key, tmpl in sorted(available.items()):
            click.echo(f"{key:<{width}}  {tmpl.summary}")
        return
    name = name or template.replace("-", "_")
    target = Path(output or f"{name}.yaml")
    if target.exists() and not force:
        raise click.UsageError(f"{target} exists; pass --force to overwrite it")
    target.write_text(render_template(template, name), encoding="utf-8")
    click.echo(f"wrote {target}; check it with: headrace validate {target}")


def _emit(text: str, output: str | None) -> None:
    if output:
        tmp = Path(f"{output}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
    else:
        click.echo(text, nl=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="headrace")
