"""A plugin op registered through the `headrace.ops` entry point: it appears in the schema and
validates; an op registered without behaviour is refused by validate (it could not run). That the
plugin's source and per-batch op also run is tests/integration/test_plugin_ops.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.plugins.install import ROOT, install_demo_plugin

PIPELINE = """\
version: 1
name: demo
nodes:
  input: {op: demo_numbers, path: numbers.txt}
  double: {op: demo_double, input: input, column: n}
  out: {op: write_parquet, input: double, path: out/}
"""


def _headrace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import cli; cli()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_a_plugin_op_appears_in_the_schema_and_validates(tmp_path: Path) -> None:
    env = install_demo_plugin(tmp_path / "site")
    (tmp_path / "numbers.txt").write_text("1\n2\n3\n")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    schema = _headrace(env, "schema")
    assert '"demo_numbers"' in schema.stdout and '"demo_double"' in schema.stdout
    result = _headrace(env, "validate", str(tmp_path / "p.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_plugin_op_with_no_behaviour_is_refused_by_validate(tmp_path: Path) -> None:
    env = install_demo_plugin(tmp_path / "site")
    text = PIPELINE.replace(
        "{op: demo_double, input: input, column: n}", "{op: demo_unrunnable, input: input}"
    )
    (tmp_path / "p.yaml").write_text(text)
    result = _headrace(env, "validate", str(tmp_path / "p.yaml"))
    assert result.returncode == 1
    assert "p.yaml:5:" in result.stdout and "has no `batch` behaviour registered" in result.stdout
