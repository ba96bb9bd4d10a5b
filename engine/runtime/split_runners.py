"""Shared split runners: long-lived threaded actors that run the splits of stages that wait on LLM pools.

A split whose stage has an LLM node spends almost all of its time waiting for the pool's answer. As a
Ray task, that wait gives the task's CPU back, so Ray starts another worker *process* for the next
queued task, which waits too; with many small runs at once every wave of waiting tasks started (and,
a second after, killed) a process of its own: 40 worker processes for 10 runs of 50 rows, most of the
wall time spent starting them.

A runner is one process that runs many such splits at once, each in a thread (a threaded Ray actor,
``max_concurrency`` threads): the waits cost a thread, not a process, and the CPU parts of small splits
(read, render, write) are short. There are a few runners per cluster (``HEADRACE_SPLIT_RUNNERS``, default
one per CPU of the cluster, at most 8), named and detached in namespace ``headrace``, started by the
first run that needs them and kept, like the pools. A runner asks for no CPU: like a pool, it is a
service whose work is bounded by each driver's LLM task slots (:mod:`engine.runtime.task_slots`).

Stages with their own placement (a tenant's CPU quota, custom resources or memory) keep running as
tasks, where Ray accounts for what they ask.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import ray

from engine.runtime.llm.limiter import NAMESPACE
from engine.runtime.worker import run_split, run_tail

_THREADS = 64
"""Splits one runner runs at once (each mostly waiting on a pool)."""
_MOST = 8
_turn = itertools.count()
_handles: dict[tuple[str, str, int], Any] = {}


class SplitRunner:
    """Runs head and tail segments as ``run_split``/``run_tail`` tasks would, many at once in threads."""

    def run_split(self, job: Any, split: Any) -> Any:
        """See :func:`engine.runtime.worker.run_split`."""
        return run_split(job, split)

    def run_tail(self, job: Any, tables: Any, index: int) -> Any:
        """See :func:`engine.runtime.worker.run_tail`."""
        return run_tail(job, tables, index)


def runs_on_runner(ray_options: Mapping[str, Any]) -> bool:
    """Whether a stage with these Ray options may run on a shared runner: it asks for CPUs only."""
    return set(ray_options) <= {"num_cpus"}


def runner_count() -> int:
    """How many runners the cluster keeps (``HEADRACE_SPLIT_RUNNERS``; default: its CPUs, at most 8)."""
    configured = os.environ.get("HEADRACE_SPLIT_RUNNERS")
    if configured:
        return max(1, int(configured))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(_MOST, cpus))


def split_runner(count: int) -> Any:
    """The next runner in turn (started on first use; Ray restarts a runner that died)."""
    index = next(_turn) % count
    # A handle is good for its Ray session only. Job ids restart at 01 in every new cluster, so the
    # driver's node id (new for every Ray started) tells a session after ray.shutdown/ray.init apart.
    context = ray.get_runtime_context()
    key = (context.get_node_id(), context.get_job_id(), index)
    handle = _handles.get(key)
    if handle is None:
        handle = _handles[key] = _start(index)
    return handle


def _start(index: int) -> Any:
    return (
        ray.remote(SplitRunner)
        .options(
            name=f"headrace-split-runner:{index}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=_THREADS,
            max_restarts=-1,
            scheduling_strategy="SPREAD",
        )
        .remote()
    )
