"""The guard in tests/conftest.py: a test without the `integration` marker cannot start Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_unit_test_that_starts_ray_fails_and_an_integration_test_may(tmp_path: Path) -> None:
    unit = tmp_path / "test_starts_ray.py"
    unit.write_text(
        "import pytest, ray\n\n"
        "def test_unit():\n    ray.init(num_cpus=1)\n\n"
        "@pytest.mark.integration\n"
        "def test_marked():\n    import ray as r\n    assert r.init is not None\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            str(unit),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "starts Ray but is not marked integration" in proc.stdout
