"""Helpers shared by the unit tests: the CLI in-process and as a real process, and the bundled configs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from engine.cli import cli
from tests.cli import run_headrace

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
CONFIG_FILES = sorted(CONFIGS.rglob("*.yaml"))
"""Every pipeline under configs/: the runnable examples and the `headrace new` templates."""

TEMPLATES = ("csv-transform", "llm-classify", "llm-extract", "state-graph")

DIAGNOSTIC = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<message>\S.*)$"
)
"""The one-line shape of every problem `headrace validate` reports."""

VALID_PIPELINE = """\
version: 1
name: demo
nodes:
  input:
    op: read_csv
    path: data.csv
  output:
    op: write_parquet
    input: input
    path: out
"""
"""A small valid pipeline: line 6 holds the source's path, line 9 the sink's input."""


def invoke(*args: str, input: str | bytes | None = None, env: dict[str, str | None] | None = None) -> Result:
    """Run ``headrace ARGS`` in-process; the result holds stdout, stderr and the exit code."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)


def run_process(
    *args: str, input: bytes | None = None, script: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``headrace ARGS`` as a real process: the console script, or ``python -c`` importing it."""
    if not script:
        return run_headrace(*args, stdin=input, timeout=120)
    exe = Path(sys.executable).with_name("headrace")
    assert exe.exists(), f"no headrace console script next to {sys.executable}"
    argv = [str(exe), *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k not in ("HEADRACE_DEBUG", "NOPE")}
    proc = subprocess.run(argv, input=input, capture_output=True, cwd=ROOT, env=env, timeout=120, check=False)
    return subprocess.CompletedProcess(
        argv, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )


def assert_no_traceback(*outputs: str) -> None:
    """A user never sees a Python traceback, whatever the input."""
    for text in outputs:
        assert "Traceback" not in text, text


def diagnostic_lines(output: str) -> list[re.Match[str]]:
    """Every non-empty line of ``output`` parsed as a diagnostic; fails on a line of any other shape."""
    parsed = []
    for line in output.splitlines():
        if not line.strip():
            continue
        m = DIAGNOSTIC.match(line)
        assert m, f"not a PATH:LINE:COL: severity: MESSAGE line: {line!r}"
        parsed.append(m)
    return parsed


def write(path: Path, content: str | bytes) -> Path:
    """Write ``content`` as bytes, so tests control line endings and encodings exactly."""
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path
