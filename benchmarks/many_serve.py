"""The ``many_serve`` case of the ``many`` family: the quickstart through a running ``headrace serve``.

A warm engine is started (loopback, its own ``$HEADRACE_HOME``), one run warms it (Ray workers, the LLM
pool), then ``headrace run configs/examples/quickstart.yaml`` is timed end to end as a user runs it: a
new process each time, from interpreter start to exit. The baseline, in the same session: the same
command with ``--no-engine`` (a private Ray per run). Target: ≤ 1 s wall per run through the engine.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT
from benchmarks.many import Sizes, _sampled, case

_QUICKSTART = ROOT / "configs" / "examples" / "quickstart.yaml"
_CLI = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())"]
_START_S = 300


def _targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    warm = r["headrace"][-1]
    median = warm["median_seconds"]
    rows = [
        ("`headrace run` quickstart via `headrace serve` ≤ 1 s", f"{median:.2f} s (median)", median <= 1.0)
    ]
    cold = r.get("headrace_run_sequential")
    if cold:
        rows.append(
            (
                "… faster than `headrace run --no-engine`",
                f"{cold['seconds_each']:.2f} s each",
                median < cold["seconds_each"],
            )
        )
    return rows


@case("many_serve", "the quickstart through a running `headrace serve`, end to end", _targets)
def measure_serve(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Time ``headrace run`` of the quickstart against a warm engine, and without one."""
    env = {
        **os.environ,
        "HEADRACE_HOME": str(work / "serve-home"),
        "HEADRACE_OUT": str(work / "serve-out"),
        "HEADRACE_ENGINE": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    runs = max(3, sizes.sequential * 3)
    server = subprocess.Popen(
        [*_CLI, "serve", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(server, Path(env["HEADRACE_HOME"]) / "engine.json")
        _run(env)  # warm-up: the engine's first run starts its workers and the LLM pool
        each: list[float] = []

        def go() -> None:
            for _ in range(runs):
                began = time.perf_counter()
                _run(env)
                each.append(time.perf_counter() - began)

        wall, memory = _sampled(go)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
    result: dict[str, Any] = {
        "headrace": [
            {
                "pipelines": runs,
                "concurrency": 1,
                "seconds": round(wall, 2),
                "per_s": round(runs / wall, 2),
                "median_seconds": round(statistics.median(each), 3),
                "min_seconds": round(min(each), 3),
                "max_seconds": round(max(each), 3),
                "seconds_each": [round(s, 3) for s in each],
                **memory,
            }
        ]
    }
    if sizes.baselines:
        each_cold: list[float] = []

        def cold() -> None:
            for _ in range(sizes.sequential):
                began = time.perf_counter()
                _run(env, "--no-engine")
                each_cold.append(time.perf_counter() - began)

        wall, memory = _sampled(cold)
        result["headrace_run_sequential"] = {
            "pipelines": sizes.sequential,
            "seconds": round(wall, 2),
            "per_s": round(sizes.sequential / wall, 3),
            "seconds_each": round(wall / sizes.sequential, 2),
            "extrapolated": True,
            **memory,
        }
    return result


def _run(env: dict[str, str], *extra: str) -> None:
    subprocess.run(
        [*_CLI, "run", str(_QUICKSTART), *extra], env=env, check=True, capture_output=True, timeout=600
    )


def _wait_for(server: subprocess.Popen[bytes], discovery: Path) -> None:
    deadline = time.monotonic() + _START_S
    while not discovery.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"headrace serve did not start (exit {server.poll()})")
        time.sleep(0.2)
