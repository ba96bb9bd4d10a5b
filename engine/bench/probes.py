"""Per-machine figures of a run on a Ray cluster: one probe actor on every alive node samples the
memory and CPU of its node's Ray processes (the raylet's process tree: the raylet with its object store,
and every worker it started) with the shared :class:`~engine.bench.harness.MemorySampler`, while a
benchmark repeat runs.

A probe asks for no CPU, so it never takes a slot from the pipeline; it is a Ray worker itself, and its
own memory (tens of MB) is inside the tree it samples: figures per node are the node's Ray processes
with the probe. The object store's figure is the growth of the machine's ``Shmem`` counter since the
probe started, so pages the store already held before the benchmark are not counted.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psutil

from engine.bench.harness import MemorySampler, shmem_bytes


class NodeProbe:
    """Samples the Ray processes of the node it runs on, between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.shm_baseline = shmem_bytes()
        parent = psutil.Process(os.getpid()).parent()
        self.root = parent.pid if parent is not None else os.getpid()
        self.sampler: MemorySampler | None = None

    def host(self) -> str:
        """This node's host name (and a sign that the probe is up)."""
        return socket.gethostname()

    def start(self) -> None:
        """Begin sampling."""
        if self.sampler is None:
            self.sampler = MemorySampler(self.shm_baseline, root=self.root).__enter__()

    def stop(self) -> dict[str, Any]:
        """End sampling and return the node's figures (see :meth:`MemoryPeaks.as_dict`)."""
        assert self.sampler is not None, "stop() before start()"
        self.sampler.__exit__(None, None, None)
        figures: dict[str, Any] = dict(self.sampler.peaks.as_dict())
        figures["host"] = socket.gethostname()
        self.sampler = None
        return figures


class ClusterProbes:
    """A :class:`NodeProbe` on every alive node of the Ray this process is connected to."""

    def __init__(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(num_cpus=0)(NodeProbe)
        self.probes: dict[str, Any] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            self.probes[node["NodeID"]] = actor.options(scheduling_strategy=strategy).remote()
        # up before the first repeat, whose time must not include starting them
        self.hosts = dict(
            zip(self.probes, ray.get([p.host.remote() for p in self.probes.values()]), strict=True)
        )

    def start(self) -> None:
        """Start sampling on every node."""
        import ray

        ray.get([p.start.remote() for p in self.probes.values()])

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop sampling; figures by node id."""
        import ray

        figures = ray.get([p.stop.remote() for p in self.probes.values()])
        return dict(zip(self.probes, figures, strict=True))

    def close(self) -> None:
        """Stop every probe actor."""
        import ray

        for probe in self.probes.values():
            ray.kill(probe)
        self.probes.clear()
