"""``headrace import``: pipelines written for other systems, converted (``import pipeline-ex FILE``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from engine.cli.common import friendly


@click.group(name="import")
def import_() -> None:
    """Convert a workflow written for another system into a headrace pipeline."""


@import_.command("pipeline-ex")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the pipeline here, not stdout.")
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False),
    help="Where `pipeline_file` sub-workflows are read from (pipeline_ex: its working directory).",
)
@friendly
def pipeline_ex(path: str, output: str | None, base_dir: str | None) -> None:
    """Convert a pipeline_ex `workflow:` YAML file (v1 or v2) into a headrace state graph.

    Prints one line per problem, FILE:LINE:COL: warning|error: MESSAGE, on stderr. Exits 1 when the
    file cannot be converted, 0 otherwise (warnings name what was not converted). Sub-workflows are
    written beside the output as NAME.headrace.yaml.
    """
    from engine.importers import import_pipeline_ex

    result = import_pipeline_ex(path, base_dir=base_dir)
    for problem in result.problems:
        click.echo(problem.format(), err=True)
    if not result.ok or result.text is None:
        sys.exit(1)
    root = Path(output).parent if output else Path(".")
    for name, text in result.nested.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, text)
        click.echo(f"{path}: wrote sub-workflow {target}", err=True)
    if output:
        _write(Path(output), result.text)
        click.echo(f"{path}: wrote {output}; check it with: headrace validate {output}", err=True)
    else:
        click.echo(result.text, nl=False)


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
