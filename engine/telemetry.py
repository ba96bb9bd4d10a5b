"""Tracing with OpenTelemetry: one trace per run, joined by spans from every Ray worker.

Off by default. The driver turns it on with :func:`configure` (``headrace run --trace console|otlp``,
or the standard ``OTEL_TRACES_EXPORTER``); then::

    run                       the driver: run_id, pipeline, status, rows, cost
    ├── split | tail          a Ray task: nodes, split index, input, rows per node, bytes read
    │   └── llm.batch         an LLM pool actor answering one batch: node, rows
    │       └── llm.call      one provider call: provider, model, attempt, tokens, cost, cache hit
    └── graph.node            a state-graph node step: node, step

Workers are other processes (other machines, on a cluster), so the run's W3C trace context travels
with the work as a small carrier dict (:func:`carrier`; ``StageJob.trace``, ``TailJob.trace``, the
``trace`` argument of ``LlmPoolActor.process``). The carrier also names the exporter, and a worker
builds its tracer provider on the first span it is handed; OTLP endpoints and headers are read from
the worker's own ``OTEL_EXPORTER_OTLP_*`` variables (shipped to cluster workers by
:mod:`engine.runtime.cluster`), so no secret rides in task arguments.

With tracing off nothing is built: every hook is behind a check of a module flag or of an empty
carrier, and no attribute dict is made.

Exporters: ``console`` (stderr), ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-http``, or
``-grpc`` when ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``), ``file`` (JSON lines appended to
``$HEADRACE_TRACE_FILE``; safe across processes, used by tests), ``none``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, cast

from engine.errors import HeadraceError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Span, Tracer

# The SDK is imported when tracing is turned on, not with this module: every hook is reached with
# tracing off, and importing the SDK costs tens of milliseconds.

ExporterName = Literal["console", "otlp", "file", "none"]
EXPORTERS: tuple[str, ...] = ("console", "otlp", "file", "none")
TRACE_FILE_VARIABLE = "HEADRACE_TRACE_FILE"
"""Where the ``file`` exporter appends its JSON lines."""

_EXPORTER_KEY = "headrace-exporter"
_FILE_KEY = "headrace-trace-file"
_SCOPE = "headrace"

_tracer: Tracer | None = None
"""This process's tracer; None while tracing is off here (the one check every hook makes)."""
_provider: TracerProvider | None = None
_settings: dict[str, str] = {}
"""What workers need to trace like this process: the exporter's name and, for ``file``, its path."""
_workers: dict[tuple[str, str], tuple[TracerProvider, Tracer]] = {}


class JsonLinesExporter:
    """A ``SpanExporter`` appending each span as one JSON line to a file; every process of a run may
    share the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        # one O_APPEND write per batch: lines of concurrent processes never interleave
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A span as plain JSON values: ids in hex, times in nanoseconds."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "pid": os.getpid(),
    }


def exporter_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The exporter ``OTEL_TRACES_EXPORTER`` asks for (None: tracing off); honours ``OTEL_SDK_DISABLED``."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    # the variable may list several exporters; the first one we know wins
    for part in name.split(","):
        if part.strip() in EXPORTERS:
            return None if part.strip() == "none" else part.strip()
    return None


def _build_exporter(name: str, trace_file: str | None) -> tuple[SpanExporter, bool]:
    """An exporter by name, and whether it should be batched (network) or written at once."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr), False
    if name == "file":
        path = trace_file or os.environ.get(TRACE_FILE_VARIABLE)
        if not path:
            raise HeadraceError(
                f"the `file` trace exporter writes to ${TRACE_FILE_VARIABLE}: set it to a path"
            )
        return cast("SpanExporter", JsonLinesExporter(path)), False
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        package = "grpc" if protocol == "grpc" else "http"
        try:
            if package == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise HeadraceError(
                f"the `otlp` trace exporter needs the package opentelemetry-exporter-otlp-proto-{package}: "
                f"`pip install opentelemetry-exporter-otlp-proto-{package}` (or use --trace console)"
            ) from None
        return OTLPSpanExporter(), True
    raise HeadraceError(f"unknown trace exporter {name!r}: use one of {', '.join(EXPORTERS)}")


def _new_provider(exporter: SpanExporter, batched: bool, service: str) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def configure(exporter: str | SpanExporter | None = None) -> bool:
    """Turn tracing on in this process (the driver) and return whether it is on.

    ``exporter`` is a name (``console``, ``otlp``, ``file``, ``none``) or an SDK ``SpanExporter``
    (in-process only: workers do not trace then); None reads ``OTEL_TRACES_EXPORTER``. The provider
    is this module's own, not the global one, so an application's tracing is left alone.
    """
    global _tracer, _provider, _settings
    shutdown()
    if exporter is None:
        exporter = exporter_from_env()
    if exporter is None or exporter == "none":
        return False
    if isinstance(exporter, str):
        trace_file = os.environ.get(TRACE_FILE_VARIABLE) if exporter == "file" else None
        built, batched = _build_exporter(exporter, trace_file)
        _settings = {_EXPORTER_KEY: exporter, **({_FILE_KEY: trace_file} if trace_file else {})}
    else:
        built, batched = exporter, False
        _settings = {}
    _provider = _new_provider(built, batched, os.environ.get("OTEL_SERVICE_NAME", "headrace"))
    _tracer = _provider.get_tracer(_SCOPE)
    return True


def shutdown() -> None:
    """Flush and turn tracing off in this process."""
    global _tracer, _provider, _settings
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider, _settings = None, None, {}


def enabled() -> bool:
    """True when this process traces (the driver after :func:`configure`)."""
    return _tracer is not None


def recording() -> bool:
    """True when there is a live span to hang a child on (cheap: the hot paths' guard)."""
    if _tracer is None:
        return False
    from opentelemetry import trace

    return trace.get_current_span().is_recording()


def carrier() -> dict[str, str]:
    """The current trace context and exporter settings, for work sent to other processes ({}: off)."""
    if _tracer is None or not _settings:
        return {}
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    out = dict(_settings)
    TraceContextTextMapPropagator().inject(out)
    return out


@contextmanager
def run_span(run_id: str | None, pipeline: str) -> Iterator[Span | None]:
    """The root span of a run on the driver (None when tracing is off)."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(
        "run", attributes={"headrace.run_id": run_id or "", "headrace.pipeline": pipeline}
    ) as span:
        yield span


@contextmanager
def span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A child of the current span in this process (call only when :func:`recording`)."""
    assert _tracer is not None
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def start_span(name: str, attributes: Mapping[str, Any]) -> Span:
    """Start a child of the current span without making it current (call only when :func:`recording`)."""
    assert _tracer is not None
    return _tracer.start_span(name, attributes=_clean(attributes))


def end_span(span: Span, attributes: Mapping[str, Any], error: str | None = None) -> None:
    """Set ``attributes`` and the status on ``span`` and end it."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(_clean(attributes))
    span.set_status(Status(StatusCode.ERROR, error) if error else Status(StatusCode.OK))
    span.end()


def set_error(span: Span, message: str) -> None:
    """Mark ``span`` failed with ``message`` (cut to 500 characters)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, message[:500]))


@contextmanager
def worker_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span in a Ray worker, child of the context in ``carrier`` (which must not be empty).

    The worker's tracer provider is built on first use from the carrier's exporter settings, and the
    span is flushed when it ends, since a worker may be stopped before a batch would be sent.
    """
    global _tracer, _settings
    name_ = carrier.get(_EXPORTER_KEY, "none")
    key = (name_, carrier.get(_FILE_KEY, ""))
    if key not in _workers:
        exporter, batched = _build_exporter(name_, key[1] or None)
        provider = _new_provider(exporter, batched, os.environ.get("OTEL_SERVICE_NAME", "headrace"))
        _workers[key] = provider, provider.get_tracer(_SCOPE)
    provider, tracer = _workers[key]
    if _tracer is None:
        # children started in this process (llm.call) find a tracer, and work this task hands on
        # (a batch sent to an LLM pool actor) gets a carrier
        _tracer = tracer
        _settings = {k: v for k, v in carrier.items() if k in (_EXPORTER_KEY, _FILE_KEY)}
    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        with tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
            yield current
    finally:
        otel_context.detach(token)
        provider.force_flush()


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes OpenTelemetry accepts: None dropped, other non-primitive values as strings."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
        else:
            out[key] = str(value)
    return out
