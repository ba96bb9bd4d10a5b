"""Measurement plumbing shared by ``headrace bench`` and ``benchmarks/``: process-tree memory and CPU,
the CPU other processes took meanwhile, repeats retried when the machine was disturbed, statistics of
repeats, and the facts of the machine.

Memory is sampled at about 10 Hz in a background thread over a process tree: by default this process
and all its descendants (``ray.init`` starts GCS, raylet and the agents as children of the driver;
workers are children of the raylet), or the tree of another process (a warm engine's, a raylet's).
Filtering ``ps`` by "ray" in the command line would also catch unrelated processes of other users of
the machine, so it is not used. Three figures come out:

- ``peak_memory_mb`` (the headline): the largest sample of (sum over the tree of resident anonymous
  memory, i.e. RSS minus file-backed and shared pages) + (growth of the kernel's ``Shmem`` counter
  since the baseline). Ray's object store lives in unlinked files of /dev/shm, so its resident pages
  show in ``Shmem`` (not as files in /dev/shm); counting them there counts each page once. Shared
  libraries (page cache) are left out.
- ``peak_rss_sum_mb``: the largest sum of plain RSS over the tree. It counts object-store pages once
  per process that maps them and shared libraries once per process, so it overstates; kept for
  comparison with tools that report RSS.
- ``peak_object_store_mb``: the largest ``Shmem`` growth alone. The store does not give pages back
  until shutdown, so this is the store's high-water mark.

The sampler also reads the CPU time of the tree and of the whole machine, so a result says how much
CPU *other* processes took while it ran (``other_cpu_share``: their CPU seconds over wall seconds
times cores). On a shared machine that figure tells which numbers were disturbed, and
:func:`repeat_quietly` runs such a repeat again.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

import psutil

DISTURBED_SHARE = 0.2
"""A repeat during which other processes used more than this share of all cores is run again."""
MAX_EXTRA_REPEATS = 2
"""How many disturbed repeats are run again, at most, per measurement."""

_MB = 1e6
T = TypeVar("T")


def shmem_bytes() -> int:
    """The kernel's ``Shmem`` counter: resident pages of tmpfs and shared memory, machine-wide."""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class MemoryPeaks:
    """Peaks seen by a :class:`MemorySampler`, in bytes, and the CPU the tree and others took."""

    total: int = 0
    rss_sum: int = 0
    object_store: int = 0
    driver: int = 0
    samples: int = 0
    tree_cpu_s: float = 0.0
    other_cpu_share: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the sampler started, the headline memory figure) at every sample."""

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
    """Samples the memory of a process tree in a thread while the ``with`` block runs.

    ``root`` is the pid whose tree is sampled (default: this process); ``shm_baseline`` the ``Shmem``
    counter before the object store of interest started (see :func:`shmem_bytes`).
    """

    def __init__(self, shm_baseline: int, interval: float = 0.1, root: int | None = None) -> None:
        self.shm_baseline = shm_baseline
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._root = psutil.Process(root)
        self._tree: list[psutil.Process] = []
        self._refreshed = 0.0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._started = time.perf_counter()
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
        p.timeline.append((round(time.perf_counter() - self._started, 3), anon + store))


def _machine_busy_s() -> float:
    t = psutil.cpu_times()._asdict()
    # guest time is already inside user time; idle and iowait are not work
    return float(sum(v for k, v in t.items() if k not in ("idle", "iowait", "guest", "guest_nice")))


@dataclass
class Repeats(Generic[T]):
    """What :func:`repeat_quietly` measured: the kept repeats and the disturbed ones run again."""

    kept: list[T] = field(default_factory=list)
    discarded: list[T] = field(default_factory=list)


def repeat_quietly(
    measure: Callable[[], T],
    repeats: int,
    others_share: Callable[[T], float],
    *,
    extra_repeats: int = MAX_EXTRA_REPEATS,
    threshold: float = DISTURBED_SHARE,
    before_rerun: Callable[[], object] = lambda: None,
) -> Repeats[T]:
    """Call ``measure`` until ``repeats`` results are kept. A result during which other processes took
    more than ``threshold`` of the machine's CPU (``others_share(result)``) is discarded and measured
    again, at most ``extra_repeats`` times (each after ``before_rerun``); past that, disturbed results
    are kept, and their share says so."""
    out: Repeats[T] = Repeats()
    while len(out.kept) < repeats:
        result = measure()
        if others_share(result) > threshold and len(out.discarded) < extra_repeats:
            out.discarded.append(result)
            before_rerun()
            continue
        out.kept.append(result)
    return out


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, min and max of repeated figures."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or ""


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Facts about this machine and the versions of headrace, Ray, pyarrow and ``packages``."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "shm_gb": round(psutil.disk_usage("/dev/shm").total / 1e9, 1) if os.path.exists("/dev/shm") else None,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("ray", "pyarrow", "duckdb", "headrace", *packages)},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def sync_disks() -> None:
    """Flush dirty pages so one measurement's writes are not paid for by the next."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()
