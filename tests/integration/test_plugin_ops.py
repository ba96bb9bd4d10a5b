"""A plugin's source and per-batch op, registered through the `headrace.ops` entry point, run in a real
`headrace run` (its own local Ray; the plugin reaches the workers through PYTHONPATH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.plugins.install import ROOT, install_demo_plugin
from tests.unit.spec.test_plugin_ops import PIPELINE

pytestmark = pytest.mark.integration


def test_a_plugin_source_and_per_batch_op_run(tmp_path: Path) -> None:
    env = install_demo_plugin(tmp_path / "site")
    env["HEADRACE_OBJECT_STORE_BYTES"] = str(256 * 1024 * 1024)
    (tmp_path / "numbers.txt").write_text("1\n2\n3\n")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from engine.cli import cli; cli()",
            "run",
            str(tmp_path / "p.yaml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "succeeded" and summary["nodes"]["double"]["rows"] == 3
    assert sorted(pq.read_table(tmp_path / "out")["n"].to_pylist()) == [2, 4, 6]
