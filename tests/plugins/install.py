"""Install the demo plugin (``tests/plugins/headrace_demo``) for one test: its package and a dist-info
with a ``headrace.ops`` entry point in a temporary folder, which the test puts on a subprocess's
PYTHONPATH; nothing is installed into the environment, and this process never imports the plugin."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def install_demo_plugin(folder: Path) -> dict[str, str]:
    """Install the plugin under ``folder``; the environment of a process that sees it (and the repo)."""
    shutil.copytree(HERE / "headrace_demo", folder / "headrace_demo")
    info = folder / "headrace_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: headrace-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[headrace.ops]\ndemo = headrace_demo\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env
