"""Prometheus metrics of the runs in this process, served over HTTP (``headrace run --metrics-port``).

The driver already keeps a live ``RunSummary`` (rows, seconds, failed rows per node; the LLM usage it
polls from the run's ledger). Rather than copying those figures into counters as they change, a
collector reads them when Prometheus scrapes, so a run pays nothing per batch for being measured; a
finished run's figures are folded into totals so counters never go back. With no server started,
:func:`track` and :func:`finish` are not called at all.

Metrics (every counter ends ``_total``)::

    headrace_runs_total{pipeline,status}                        runs finished, by outcome
    headrace_runs_active{pipeline}                              runs in progress
    headrace_rows_total{pipeline,node}                          rows out of each node
    headrace_rows_in_total{pipeline,node}                       rows into each node
    headrace_failed_rows_total{pipeline,node}                   rows skipped or dead-lettered
    headrace_bytes_read_total{pipeline,node}                    input bytes read by a source node
    headrace_node_seconds_total{pipeline,node}                  task time spent in each node
    headrace_split_retries_total{pipeline}                      splits retried after transient errors
    headrace_llm_requests_total{pipeline,node,provider,model,outcome}   billed | cached | failed
    headrace_llm_tokens_total{pipeline,node,provider,model,kind}        input | output | cached_*
    headrace_llm_cost_usd_total{pipeline,node,provider,model}
    headrace_scheduler_in_flight{pipeline}                      Ray references the driver waits on
    headrace_scheduler_window{pipeline}                         the most split tasks in flight
    headrace_scheduler_backlog{pipeline}                        batches queued at barriers
    headrace_graph_checkpoint_seconds{pipeline}                 histogram: writing a step's checkpoint
    headrace_engine_runs{tenant,state}                          an Engine's runs: queued | running

An LLM node's usage is labelled with its primary provider and model (the ledger counts per node;
calls answered by a fallback are counted under the primary).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.errors import HeadraceError
from engine.logs import redact_data, secret_values

if TYPE_CHECKING:
    from engine.runtime.summary import RunSummary

QueueDepth = Callable[[], tuple[int, int, int]]
"""Returns the scheduler's (in flight, window, backlog)."""
EngineDepth = Callable[[], Mapping[str, tuple[int, int]]]
"""Returns an engine's runs (queued, running) by tenant."""

REGISTRY = CollectorRegistry()
"""headrace's own registry: Ray's and an application's metrics are left alone."""

CHECKPOINT_SECONDS = Histogram(
    "headrace_graph_checkpoint_seconds",
    "Time to write one step's checkpoint of a state graph.",
    ["pipeline"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)

_NODE_FIELDS = {
    "rows": "rows out of each node",
    "rows_in": "rows into each node",
    "failed_rows": "rows a node failed (skipped or dead-lettered)",
    "bytes_read": "input bytes read by each source node",
    "node_seconds": "task time spent in each node",
}
_REQUESTS = {"billed": "requests", "cached": "cached_requests", "failed": "failed_requests"}
_TOKENS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cached_input": "cached_input_tokens",
    "cached_output": "cached_output_tokens",
}


@dataclass
class _Run:
    summary: RunSummary
    models: Mapping[str, tuple[str, str]]
    queue: QueueDepth | None = None


class _State:
    """The runs this process has seen: live ones by id, and totals of the finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, _Run] = {}
        self.runs: dict[tuple[str, str], int] = {}
        self.nodes: dict[tuple[str, str, str], float] = {}  # (pipeline, node, field) -> total
        self.llm: dict[tuple[str, str, str, str, str], float] = {}  # (pipeline, node, prov, model, key)
        self.retries: dict[str, int] = {}
        self.engines: dict[int, EngineDepth] = {}


_state = _State()
_server: Any = None


DEFAULT_ADDR = "127.0.0.1"
"""Loopback: run figures (pipeline and node names, costs) are not published to the network unless the
operator asks for it with ``--metrics-addr``."""


def serve(port: int, addr: str = DEFAULT_ADDR) -> int:
    """Serve ``/metrics`` on ``addr:port`` (port 0: any free port) from a background thread for the life
    of this process; returns the port. A second call returns the first server's port."""
    global _server
    if _server is None:
        try:
            server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
        except OSError as exc:
            raise HeadraceError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port or --metrics-addr"
            ) from None
        _server = server
    return int(_server.server_port)


def stop() -> None:
    """Stop serving (the figures so far stay in the registry)."""
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None


def serving() -> bool:
    """True once :func:`serve` has started the endpoint (the driver's cheap check)."""
    return _server is not None


def track(summary: RunSummary, models: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Report ``summary`` live until :func:`finish`; ``models`` maps an LLM node to (provider, model)."""
    with _state.lock:
        _state.live[summary.run_id] = _Run(summary, dict(models or {}))


def track_queue(run_id: str, queue: QueueDepth) -> None:
    """Report the scheduler's queue depth of run ``run_id`` while it is live."""
    with _state.lock:
        if run_id in _state.live:
            _state.live[run_id].queue = queue


def track_engine(key: int, depth: EngineDepth) -> None:
    """Report an engine's queue (``key`` names it until :func:`untrack_engine`)."""
    with _state.lock:
        _state.engines[key] = depth


def untrack_engine(key: int) -> None:
    """Stop reporting the engine ``key``."""
    with _state.lock:
        _state.engines.pop(key, None)


def finish(summary: RunSummary | Any) -> None:
    """Count a finished run by status and fold its figures into the totals (any summary with
    ``run_id``, ``pipeline`` and ``status``: a state graph's is counted too)."""
    with _state.lock:
        run = _state.live.pop(summary.run_id, None)
        key = (summary.pipeline, summary.status)
        _state.runs[key] = _state.runs.get(key, 0) + 1
        if run is None:
            return
        for (pipeline, node, name), value in _node_figures(run):
            _state.nodes[(pipeline, node, name)] = _state.nodes.get((pipeline, node, name), 0) + value
        for labels, value in _llm_figures(run):
            _state.llm[labels] = _state.llm.get(labels, 0) + value
        pipeline = run.summary.pipeline
        _state.retries[pipeline] = _state.retries.get(pipeline, 0) + run.summary.retries


def _node_figures(run: _Run) -> Iterator[tuple[tuple[str, str, str], float]]:
    pipeline = run.summary.pipeline
    for node, stats in list(run.summary.nodes.items()):
        yield (pipeline, node, "rows"), stats.rows
        yield (pipeline, node, "rows_in"), stats.rows_in
        yield (pipeline, node, "failed_rows"), stats.failed
        yield (pipeline, node, "bytes_read"), stats.bytes_read
        yield (pipeline, node, "node_seconds"), stats.seconds


def _llm_figures(run: _Run) -> Iterator[tuple[tuple[str, str, str, str, str], float]]:
    pipeline = run.summary.pipeline
    for node, stats in list(run.summary.nodes.items()):
        usage = stats.llm
        if usage is None:
            continue
        provider, model = run.models.get(node, ("unknown", "unknown"))
        for key in (*_REQUESTS.values(), *_TOKENS.values(), "cost_usd"):
            yield (pipeline, node, provider, model, key), usage.get(key, 0)


class _Collector(Collector):
    """Builds every family at scrape time from the totals and the live summaries."""

    def collect(self) -> Iterator[Metric]:
        secrets = secret_values()
        for metric in self._families():
            if secrets:  # a secret interpolated into a pipeline's name is not published as a label
                metric.samples = [s._replace(labels=redact_data(s.labels)) for s in metric.samples]
            yield metric

    def _families(self) -> Iterator[Metric]:
        with _state.lock:
            live = list(_state.live.values())
            runs = dict(_state.runs)
            nodes = dict(_state.nodes)
            llm = dict(_state.llm)
            retries = dict(_state.retries)
            engines = list(_state.engines.values())
        for run in live:
            for key, value in _node_figures(run):
                nodes[key] = nodes.get(key, 0) + value
            for labels, value in _llm_figures(run):
                llm[labels] = llm.get(labels, 0) + value
            retries[run.summary.pipeline] = retries.get(run.summary.pipeline, 0) + run.summary.retries

        finished = CounterMetricFamily(
            "headrace_runs", "Runs finished, by status.", labels=["pipeline", "status"]
        )
        for (pipeline, status), count in sorted(runs.items()):
            finished.add_metric([pipeline, status], count)
        yield finished
        active = GaugeMetricFamily("headrace_runs_active", "Runs in progress.", labels=["pipeline"])
        # a pipeline whose runs all ended reads 0 (a vanished series would keep its last value on a graph)
        per_pipeline: dict[str, int] = dict.fromkeys((p for p, _ in runs), 0)
        for run in live:
            per_pipeline[run.summary.pipeline] = per_pipeline.get(run.summary.pipeline, 0) + 1
        for pipeline, count in sorted(per_pipeline.items()):
            active.add_metric([pipeline], count)
        yield active

        for name, doc in _NODE_FIELDS.items():
            family = CounterMetricFamily(
                f"headrace_{name}", doc.capitalize() + ".", labels=["pipeline", "node"]
            )
            for (pipeline, node, field_), value in sorted(nodes.items()):
                if field_ == name:
                    family.add_metric([pipeline, node], value)
            yield family
        family = CounterMetricFamily(
            "headrace_split_retries", "Splits retried after transient errors.", labels=["pipeline"]
        )
        for pipeline, count in sorted(retries.items()):
            family.add_metric([pipeline], count)
        yield family

        yield from _llm_families(llm)
        yield from _queue_families(live, {p for p, _ in runs})
        yield from _engine_family(engines)


def _llm_families(llm: dict[tuple[str, str, str, str, str], float]) -> Iterator[Metric]:
    labels = ["pipeline", "node", "provider", "model"]
    requests = CounterMetricFamily(
        "headrace_llm_requests", "LLM requests by outcome.", labels=[*labels, "outcome"]
    )
    tokens = CounterMetricFamily("headrace_llm_tokens", "LLM tokens by kind.", labels=[*labels, "kind"])
    cost = CounterMetricFamily("headrace_llm_cost_usd", "LLM spend in US dollars.", labels=labels)
    for (pipeline, node, provider, model, key), value in sorted(llm.items()):
        base = [pipeline, node, provider, model]
        for outcome, field_ in _REQUESTS.items():
            if key == field_:
                requests.add_metric([*base, outcome], value)
        for kind, field_ in _TOKENS.items():
            if key == field_:
                tokens.add_metric([*base, kind], value)
        if key == "cost_usd":
            cost.add_metric(base, value)
    yield from (requests, tokens, cost)


def _engine_family(engines: list[EngineDepth]) -> Iterator[Metric]:
    counts: dict[tuple[str, str], int] = {}
    for depth in engines:
        for tenant, (queued, running) in depth().items():
            counts[(tenant, "queued")] = counts.get((tenant, "queued"), 0) + queued
            counts[(tenant, "running")] = counts.get((tenant, "running"), 0) + running
    family = GaugeMetricFamily(
        "headrace_engine_runs",
        "Runs an engine holds, by tenant: queued or running.",
        labels=["tenant", "state"],
    )
    for (tenant, state), value in sorted(counts.items()):
        family.add_metric([tenant, state], value)
    yield family


def _queue_families(live: list[_Run], ended: set[str]) -> Iterator[Metric]:
    names = (
        ("in_flight", "Ray references the driver is waiting on."),
        ("window", "The most split tasks the scheduler keeps in flight."),
        ("backlog", "Batches handed to a barrier and not yet through its tail task."),
    )
    depth: dict[str, list[int]] = {pipeline: [0, 0, 0] for pipeline in ended}  # ended: 0, not gone
    for run in live:
        if run.queue is not None:
            total = depth.setdefault(run.summary.pipeline, [0, 0, 0])
            for i, value in enumerate(run.queue()):
                total[i] += value
    for i, (name, doc) in enumerate(names):
        family = GaugeMetricFamily(f"headrace_scheduler_{name}", doc, labels=["pipeline"])
        for pipeline, figures in sorted(depth.items()):
            family.add_metric([pipeline], figures[i])
        yield family


REGISTRY.register(_Collector())
