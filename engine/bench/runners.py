"""Where ``headrace bench`` runs a pipeline, once per call, on an engine kept warm between calls:

- :class:`LocalRunner`: an :class:`~engine.runtime.engine.Engine` in this process, on a private Ray
  started once (or the cluster at ``--address``, or a Ray this process already has). Memory and CPU are
  those of this process's tree (the driver, and Ray's processes when Ray was started here); on a
  cluster, a probe on every node (:mod:`engine.bench.probes`) adds each machine's figures.
- :class:`ServedRunner`: a warm engine (``headrace serve``) over its HTTP API, as ``headrace run``
  submits to it. Memory and CPU are those of the server's process tree when the server runs on this
  machine and its discovery file names it (its pid); otherwise they are not measured, and the figures
  say so.

Each call returns the run's summary (the object ``headrace run --json`` prints, read as it is: per-node
rows, seconds, bytes read and LLM usage are never measured twice) with the wall time and the samples.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.bench.harness import MemorySampler, shmem_bytes
from engine.errors import ConfigError, Diagnostic, HeadraceError

_MB = 1e6


class BenchRunFailed(HeadraceError):
    """A benchmark run did not succeed: the benchmark stops with the run's exit code."""

    code = "bench_run_failed"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunOutcome:
    """One run as measured: its summary, wall time, and the process tree's figures while it ran."""

    summary: dict[str, Any]
    wall_s: float
    tree: dict[str, float] | None = None
    """:meth:`MemoryPeaks.as_dict` of the tree (summed over machines on a cluster); None: not measured."""
    timeline: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the run was submitted, memory MB) of the tree, about every 0.1 s."""
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Figures of each machine (Ray node id, or the host name for a run on this machine)."""

    @property
    def others_cpu_share(self) -> float:
        """The share of the machine's CPU other processes took meanwhile (0 when not measured)."""
        return float((self.tree or {}).get("other_cpu_share", 0.0))


class Runner(Protocol):
    """Runs a pipeline once with ``--set`` values and measures it."""

    where: dict[str, Any]
    """Where runs go: ``{"mode": "local" | "cluster" | "served", ...}``, as the results record it."""

    def run(self, path: str, overrides: Sequence[str]) -> RunOutcome:
        """Run the pipeline at ``path`` with ``overrides`` until it ends; raise if it did not succeed."""
        ...

    def close(self) -> None:
        """Release the engine (and stop a Ray started for it)."""
        ...


class LocalRunner:
    """Runs on an :class:`~engine.runtime.engine.Engine` in this process (see the module's docstring)."""

    def __init__(self, address: str | None = None, *, cache: bool = False) -> None:
        import ray

        from engine.runtime.engine import Engine

        self.cache = cache
        self.shm_baseline = shmem_bytes()  # before Ray starts: the store's pages count from here
        self.engine = Engine(address, start_ray=True, max_concurrent_runs=1).start()
        self.probes: Any = None
        alive = [n for n in ray.nodes() if n.get("Alive")]
        self.where: dict[str, Any] = {"mode": "cluster" if address else "local", "nodes": len(alive)}
        if address:
            from engine.bench.probes import ClusterProbes

            self.where["address"] = address
            try:
                self.probes = ClusterProbes()
            except BaseException:
                self.engine.close()
                raise

    def run(self, path: str, overrides: Sequence[str]) -> RunOutcome:
        from engine.check import check_file
        from engine.compile import compile_pipeline

        if self.probes is not None:
            self.probes.start()
        with MemorySampler(self.shm_baseline) as sampler:
            began = time.perf_counter()
            # checked and compiled inside the timed part, as a warm engine does for each request
            checked = check_file(path, overrides=overrides)
            compiled = compile_pipeline(checked, cache=self.cache).raise_errors()
            summary = self.engine.run(compiled, progress=False, cache=self.cache).as_dict()
            wall = time.perf_counter() - began
        tree = sampler.peaks.as_dict()
        timeline = [(t, round(b / _MB, 1)) for t, b in sampler.peaks.timeline]
        if self.probes is None:
            machines = {socket.gethostname(): tree}
        else:
            machines = self.probes.stop()
            tree = _cluster_tree(tree, machines)
        _raise_unless_succeeded(summary)
        return RunOutcome(summary, wall, tree, timeline, machines)

    def close(self) -> None:
        try:
            if self.probes is not None:
                self.probes.close()
        finally:
            self.engine.close()


class ServedRunner:
    """Runs on a warm engine (``headrace serve``) through its API (see the module's docstring)."""

    def __init__(self, target: Any, *, cache: bool = False) -> None:
        from engine.service.client import EngineClient
        from engine.service.discovery import discovery_path, pid_alive, read_info

        self.cache = cache
        self.client = EngineClient(target)
        info = read_info(discovery_path())
        self.pid = info.pid if info is not None and info.url == target.url and pid_alive(info.pid) else None
        self.shm_baseline = shmem_bytes()
        self.where = {
            "mode": "served",
            "engine": target.url,
            "measured_tree": "the server's processes on this machine"
            if self.pid is not None
            else "not measured: the engine's process is not on this machine (or not in its discovery file)",
        }

    def run(self, path: str, overrides: Sequence[str]) -> RunOutcome:
        from engine.cli.run_remote import request_body
        from engine.service.client import Refused

        body = request_body(path, overrides, cache=self.cache)
        sampler = MemorySampler(self.shm_baseline, root=self.pid) if self.pid is not None else None
        if sampler is not None:
            sampler.__enter__()
        try:
            began = time.perf_counter()
            try:
                created = self.client.submit(body)
            except Refused as exc:
                raise ConfigError([Diagnostic(**p) for p in exc.problems]) from None
            end: dict[str, Any] = {}
            for kind, data in self.client.events(created["run_id"]):
                if kind == "end":
                    end = data
                    break
            wall = time.perf_counter() - began
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
        summary = end.get("summary")
        if summary is None:
            error = end.get("error") or {}
            raise BenchRunFailed(
                f"run {created['run_id']} on {self.where['engine']}: {error.get('message', 'no summary')}",
                int(end.get("exit_code", 70)),
            )
        _raise_unless_succeeded(summary)
        if sampler is None:
            return RunOutcome(summary, wall)
        tree = sampler.peaks.as_dict()
        timeline = [(t, round(b / _MB, 1)) for t, b in sampler.peaks.timeline]
        return RunOutcome(summary, wall, tree, timeline, {socket.gethostname(): tree})

    def close(self) -> None:
        self.client.close()


def _raise_unless_succeeded(summary: dict[str, Any]) -> None:
    if summary.get("status") != "succeeded":
        raise BenchRunFailed(
            f"run {summary.get('run_id')} ({summary.get('pipeline')}) ended {summary.get('status')}: "
            f"{summary.get('error') or 'see its record with `headrace runs show`'}",
            int(summary.get("exit_code", 3)),
        )


def _cluster_tree(driver: dict[str, float], machines: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The whole run's figures on a cluster: CPU and memory summed over the driver and every machine
    (memory peaks summed are an upper bound: machines peak at different moments), the largest share of
    others' CPU any machine saw."""
    total = dict(driver)
    for key in ("peak_memory_mb", "peak_rss_sum_mb", "peak_object_store_mb", "tree_cpu_s"):
        total[key] = round(driver.get(key, 0.0) + sum(float(m.get(key, 0.0)) for m in machines.values()), 2)
    total["other_cpu_share"] = max(
        [
            driver.get("other_cpu_share", 0.0),
            *(float(m.get("other_cpu_share", 0.0)) for m in machines.values()),
        ]
    )
    return total
