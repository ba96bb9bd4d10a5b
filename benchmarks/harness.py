"""Measurement plumbing: a Ray session per system, wall-clock timing, memory sampling, machine facts
and results files.

Memory is sampled at about 10 Hz in a background thread over the process tree of the driver: the
driver and all its descendants (``ray.init`` starts GCS, raylet and the agents as children of the
driver; workers are children of the raylet). Filtering ``ps`` by "ray" in the command line would also
catch unrelated processes of other users of the machine, so it is not used. Three figures come out:

- ``peak_memory_mb`` (the headline): the largest sample of (sum over the tree of resident anonymous
  memory, i.e. RSS minus file-backed and shared pages) + (growth of the kernel's ``Shmem`` counter
  since before Ray started). Ray's object store lives in unlinked files of /dev/shm, so its resident
  pages show in ``Shmem`` (not as files in /dev/shm); counting them there counts each page once.
  Shared libraries (page cache) are left out.
- ``peak_rss_sum_mb``: the largest sum of plain RSS over the tree. It counts object-store pages once
  per process that maps them and shared libraries once per process, so it overstates; kept for
  comparison with tools that report RSS.
- ``peak_object_store_mb``: the largest ``Shmem`` growth alone. The store does not give pages back
  until shutdown, so this is the store's high-water mark.

The sampler also reads the CPU time of the tree and of the whole machine, so a result says how much
CPU *other* processes took while it ran (``other_cpu_share``: their CPU seconds over wall seconds
times cores). On a shared machine that figure tells which numbers were disturbed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

OBJECT_STORE_BYTES = 1024**3
"""Object store size of every Ray session the harness starts."""

_MB = 1e6


def shmem_bytes() -> int:
    """The kernel's ``Shmem`` counter: resident pages of tmpfs and shared memory, machine-wide."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class MemoryPeaks:
    """Peaks seen by a :class:`MemorySampler`, in bytes."""

    total: int = 0
    rss_sum: int = 0
    object_store: int = 0
    driver: int = 0
    samples: int = 0
    tree_cpu_s: float = 0.0
    other_cpu_share: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Peaks in MB (10^6 bytes), as stored in results, and the CPU taken by the tree and by others."""
        return {
            "peak_memory_mb": round(self.total / _MB, 1),
            "peak_rss_sum_mb": round(self.rss_sum / _MB, 1),
            "peak_object_store_mb": round(self.object_store / _MB, 1),
            "peak_driver_rss_mb": round(self.driver / _MB, 1),
            "memory_samples": self.samples,
            "tree_cpu_s": round(self.tree_cpu_s, 2),
            "other_cpu_share": round(self.other_cpu_share, 3),
        }


class MemorySampler:
    """Samples the memory of this process's tree in a thread while the ``with`` block runs."""

    def __init__(self, shm_baseline: int, interval: float = 0.1) -> None:
        self.shm_baseline = shm_baseline
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._root = psutil.Process()
        self._tree: list[psutil.Process] = []
        self._refreshed = 0.0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._started = 0.0
        self._machine_busy = 0.0

    def __enter__(self) -> MemorySampler:
        self._started = time.perf_counter()
        self._machine_busy = _machine_busy_s()
        self.sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        wall = time.perf_counter() - self._started
        tree = sum(self._cpu_last[pid] - self._cpu_first.get(pid, 0.0) for pid in self._cpu_last)
        other = _machine_busy_s() - self._machine_busy - tree
        self.peaks.tree_cpu_s = tree
        self.peaks.other_cpu_share = max(0.0, other) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self, first: bool = False) -> None:
        """Take one sample and update the peaks (``first``: CPU times so far are the baseline)."""
        now = time.monotonic()
        if now - self._refreshed > 0.5:
            with contextlib.suppress(psutil.Error):
                self._tree = self._root.children(recursive=True)
            self._refreshed = now
        anon = rss = 0
        driver = 0
        for proc in [self._root, *self._tree]:
            try:
                with proc.oneshot():
                    info = proc.memory_info()
                    cpu = proc.cpu_times()
            except psutil.Error:
                continue
            self._cpu_last[proc.pid] = cpu.user + cpu.system
            if first:
                self._cpu_first[proc.pid] = cpu.user + cpu.system
            rss += info.rss
            anon += max(0, info.rss - info.shared)
            if proc is self._root:
                driver = info.rss
        store = max(0, shmem_bytes() - self.shm_baseline)
        p = self.peaks
        p.total = max(p.total, anon + store)
        p.rss_sum = max(p.rss_sum, rss)
        p.object_store = max(p.object_store, store)
        p.driver = max(p.driver, driver)
        p.samples += 1


def _machine_busy_s() -> float:
    t = psutil.cpu_times()._asdict()
    # guest time is already inside user time; idle and iowait are not work
    return float(sum(v for k, v in t.items() if k not in ("idle", "iowait", "guest", "guest_nice")))


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


def summarise(seconds: list[float], input_bytes: int) -> dict[str, Any]:
    """Median, min and max of repeated wall times, and the MB/s (input bytes / wall seconds) of each."""
    rates = [input_bytes / s / _MB for s in seconds]
    return {
        "repeats": len(seconds),
        "seconds": [round(s, 3) for s in seconds],
        "seconds_median": round(statistics.median(seconds), 3),
        "mb_per_s": round(statistics.median(rates), 1),
        "mb_per_s_min": round(min(rates), 1),
        "mb_per_s_max": round(max(rates), 1),
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Facts about this machine and the library versions the figures depend on."""
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "shm_gb": round(psutil.disk_usage("/dev/shm").total / 1e9, 1) if os.path.exists("/dev/shm") else None,
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("ray", "pyarrow", "duckdb", "langgraph", "numpy", "psutil", "matplotlib", "headrace")
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def sync_disks() -> None:
    """Flush dirty pages so one measurement's writes are not paid for by the next."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


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
