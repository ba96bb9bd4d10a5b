"""Structured logs: every line says which run (and node) it is about, and never shows a secret.

headrace logs to the ``headrace`` logger. :func:`configure_logging` (called by the CLI) writes JSON
lines when stderr is not a terminal (a container, a CI job, a log shipper), else short text lines::

    {"ts": "2026-11-26T00:52:05.096Z", "level": "warning", "logger": "headrace.runtime",
     "message": "split 3 of node 'output' failed; retry 2 in 0.40s: ...", "run_id": "run-...",
     "pipeline": "tickets", "node": "output", "split": 3}

``run_id`` and ``pipeline`` come from :func:`run_context` (entered by ``run_checked`` around a run),
``node`` and other fields from ``extra=``; keys without a value are null, so every line has them.
``HEADRACE_LOG_LEVEL`` (default ``warning``) and ``HEADRACE_LOG_FORMAT`` (``json`` | ``text``) override
the defaults. Provider keys (``sk-ant-...``, OpenAI's ``sk-...``, ``AIza...``), bearer tokens and the values
of the environment's secret variables (:func:`secret_variable`: the provider key variables and any name
holding ``KEY``, ``TOKEN``, ``SECRET`` or ``PASSWORD``) are replaced by ``[redacted]``. :func:`redact` and
:func:`redact_data` are also what the audit log, the run records and the CLI's summaries pass through,
so a secret interpolated into a plain field (``name: ${ANTHROPIC_API_KEY}``) is shown nowhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

LOGGER = "headrace"
_run: ContextVar[tuple[str, str] | None] = ContextVar("headrace_run", default=None)

_SECRET_PATTERNS = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{6,}|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"
    r"|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}"
    r"|(?i:(?:api[_-]?key|x-goog-api-key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
)
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
_PROVIDER_KEYS = frozenset({"ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"})
_MIN_SECRET_CHARS = 6
"""Shorter values are not redacted: replacing every ``abc`` in a log line hides more than it protects."""
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def get_logger(name: str) -> logging.Logger:
    """The logger for a part of headrace (``runtime``, ``cli``...), under ``headrace``."""
    return logging.getLogger(f"{LOGGER}.{name}")


@contextmanager
def run_context(run_id: str, pipeline: str) -> Iterator[None]:
    """Tag every log line written in this context (thread or task) with the run and pipeline."""
    token = _run.set((run_id, pipeline))
    try:
        yield
    finally:
        _run.reset(token)


def secret_variable(name: str) -> bool:
    """Whether an environment variable holds a secret: a provider key variable, or a name holding
    ``KEY``, ``TOKEN``, ``SECRET`` or ``PASSWORD`` (any case)."""
    upper = name.upper()
    return upper in _PROVIDER_KEYS or any(word in upper for word in _SECRET_WORDS)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment's secret variables, longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if secret_variable(k) and len(v) >= _MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with provider keys, tokens and secret variables' values replaced."""
    return _redact(text, secret_values(environ))


def redact_data(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with :func:`redact` applied to every string in it,
    keys included; other values are returned as they are."""
    secrets = secret_values(environ)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _redact(item, secrets)
        if isinstance(item, Mapping):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(v) for v in item)
        return item

    return walk(value)


def _redact_field(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, "[redacted]")
    return _SECRET_PATTERNS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    found = match.group(0)
    # keep the "api_key=" part of a key=value match, so the line still says what was there
    prefix = re.match(
        r"(?i)(?:api[_-]?key|x-goog-api-key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?", found
    )
    return (prefix.group(0) if prefix else "") + "[redacted]"


class _Fields(logging.Filter):
    """Adds run_id, pipeline and node to every record (null when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = _run.get()
        if not hasattr(record, "run_id"):
            record.run_id = run[0] if run else None
        if not hasattr(record, "pipeline"):
            record.pipeline = run[1] if run else None
        if not hasattr(record, "node"):
            record.node = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, run_id, pipeline, node, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "run_id": getattr(record, "run_id", None),
            "pipeline": _redact_field(getattr(record, "pipeline", None)),
            "node": getattr(record, "node", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``LEVEL [run_id node] message`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        where = " ".join(
            str(v) for v in (getattr(record, "run_id", None), getattr(record, "node", None)) if v
        )
        text = f"{record.levelname.lower()}: " + (f"[{where}] " if where else "") + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


def configure_logging(stream: IO[str] | None = None, *, json_lines: bool | None = None) -> logging.Handler:
    """Send the ``headrace`` logger's records to ``stream`` (stderr), as JSON lines unless it is a
    terminal; returns the handler (configuring again replaces it)."""
    stream = stream or sys.stderr
    fmt = os.environ.get("HEADRACE_LOG_FORMAT", "").lower()
    if json_lines is None:
        json_lines = fmt == "json" or (fmt != "text" and not (hasattr(stream, "isatty") and stream.isatty()))
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_headrace", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler._headrace = True  # type: ignore[attr-defined]
    handler.addFilter(_Fields())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("HEADRACE_LOG_LEVEL", "warning").upper())
    logger.propagate = False
    return handler


# A library logs nowhere until its application (or the CLI) configures logging.
logging.getLogger(LOGGER).addHandler(logging.NullHandler())
