"""Running the real ``headrace`` command in a child process, for tests of every layer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADRACE = (sys.executable, "-c", "from engine.cli import main; main()")
"""argv prefix that runs the CLI with this interpreter (the console script may not be on PATH)."""


def run_headrace(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """``headrace ARGS`` in a child process; output decoded; ``env`` adds to the current environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("HEADRACE_DEBUG", "NOPE")}
    full_env.update(env or {})
    proc = subprocess.run(
        [*HEADRACE, *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=cwd or ROOT,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
