"""The benchmark families' plumbing: a Ray session per system, warm workers, results files and the
modes of a session. Timing, process-tree memory and CPU, others' CPU, retried disturbed repeats and
machine facts are :mod:`engine.bench.harness` (shared with ``headrace bench``, so there is one harness);
they are re-exported here for the families.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.bench import harness as _shared
from engine.bench.harness import (
    DISTURBED_SHARE,
    MAX_EXTRA_REPEATS,
    MemoryPeaks,
    MemorySampler,
    Repeats,
    repeat_quietly,
    shmem_bytes,
    summarise,
    sync_disks,
)

__all__ = [
    "DISTURBED_SHARE",
    "MAX_EXTRA_REPEATS",
    "OBJECT_STORE_BYTES",
    "RESULTS_DIR",
    "ROOT",
    "MemoryPeaks",
    "MemorySampler",
    "Mode",
    "Repeats",
    "ResultsFiles",
    "RunOptions",
    "machine_info",
    "print_targets",
    "ray_running",
    "repeat_quietly",
    "shmem_bytes",
    "summarise",
    "sync_disks",
    "warm_workers",
    "write_json",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

OBJECT_STORE_BYTES = 1024**3
"""Object store size of every Ray session the harness starts."""


def machine_info() -> dict[str, Any]:
    """Facts about this machine and the library versions the families' figures depend on."""
    return _shared.machine_info(("langgraph", "numpy", "psutil", "matplotlib"))


@contextlib.contextmanager
def ray_running(num_cpus: int | None = None) -> Iterator[bool]:
    """A Ray session for one system: reuse an initialised Ray, else start one and stop it after.

    Yields whether the session was started here. The store is sized explicitly
    (:data:`OBJECT_STORE_BYTES`), every CPU of the machine is offered, the dashboard is off, and
    workers get the repository on their ``PYTHONPATH`` so they can import the baselines' task
    functions (``benchmarks`` is not an installed package) whatever the current directory.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        # "local": always a new instance; without it ray.init joins a `ray start` cluster of the machine
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 1,
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    try:
        yield True
    finally:
        ray.shutdown()


def warm_workers(modules: tuple[str, ...]) -> int:
    """Start one Ray worker per CPU and have each import ``modules``; returns how many workers ran.

    Tasks hold their worker briefly so that each lands on a different one; later tasks of the same
    job reuse these workers, so no timed run pays for starting a worker or importing pyarrow.
    """
    import ray

    def load(names: tuple[str, ...]) -> int:
        import importlib

        for name in names:
            importlib.import_module(name)
        time.sleep(0.5)
        return os.getpid()

    task = ray.remote(num_cpus=1)(load)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return len(set(ray.get([task.remote(modules) for _ in range(cpus)])))


Mode = Literal["full", "quick", "tiny"]
"""How much a family measures: the full run, ``--quick``, or ``tiny`` (the hidden ``--tiny``: every part
once on the smallest input, to check the plumbing; its figures mean nothing)."""


@dataclass(frozen=True)
class RunOptions:
    """What one ``python -m benchmarks run`` session asks of each family it runs."""

    mode: Mode
    results_dir: Path = RESULTS_DIR
    """Where the family writes its JSON, markdown and plots."""
    command: str = "python -m benchmarks run"
    """The command line of the session, recorded in every results file."""
    data_dir: Path | None = None
    """Where the streaming family generates its input data (None: ``benchmarks/data``)."""
    keep_data: bool = False
    """Keep generated datasets of 1 GB and more (the streaming family deletes them once measured)."""
    gate: dict[str, Any] | None = None
    """The quiet-machine check the session made before this family, recorded as is; None: the family
    checks the machine itself (the first family of a session, when our own processes are not yet in
    the load average)."""


@dataclass
class ResultsFiles:
    """Where one run's results went."""

    json: Path
    latest_json: Path
    extra: list[Path] = field(default_factory=list)


def write_json(doc: dict[str, Any], name: str, results_dir: Path | None = None) -> Path:
    """Write ``<date>-<name>.json`` (the date of ``doc["machine"]``) into the results folder, after
    setting ``doc["results_file"]`` to its path (relative to the repository when inside it)."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{str(doc['machine']['date'])[:10]}-{name}.json"
    resolved = path.resolve()
    doc["results_file"] = str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def write_results(doc: dict[str, Any], name: str, results_dir: Path | None = None) -> ResultsFiles:
    """Write ``<date>-<name>.json`` and a copy as ``latest.json`` (the streaming family's) into the
    results folder."""
    path = write_json(doc, name, results_dir)
    latest = path.with_name("latest.json")
    shutil.copyfile(path, latest)
    return ResultsFiles(path, latest)


def print_targets(doc: dict[str, Any]) -> None:
    """Print each target of a results document with what was measured, and the family's wall time."""
    for t in doc["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['measured']}", flush=True)
    print(f"wall time {doc['wall_seconds']:.0f} s", flush=True)
