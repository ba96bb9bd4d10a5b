"""Structured logs: JSON lines off a terminal with run id and node on every line, text on one, and no
secret ever written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from engine.logs import LOGGER, configure_logging, get_logger, redact, run_context


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger(LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.usefixtures("restore_logger")
def test_json_lines_carry_run_and_node_and_hide_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "plain-secret-value-123")
    monkeypatch.delenv("HEADRACE_LOG_FORMAT", raising=False)
    stream = io.StringIO()  # not a terminal: JSON
    configure_logging(stream)
    log = get_logger("runtime")
    with run_context("run-1", "tickets"):
        log.warning("split 3 failed: auth sk-ant-api03-abcdefghijkl rejected", extra={"node": "classify"})
        log.warning("calling with plain-secret-value-123", extra={"split": 4})
    log.warning("outside a run")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["run_id"] == "run-1" and first["pipeline"] == "tickets" and first["node"] == "classify"
    assert first["level"] == "warning" and first["logger"] == "headrace.runtime"
    assert "sk-ant" not in first["message"] and "[redacted]" in first["message"]
    assert "plain-secret" not in second["message"] and second["split"] == 4 and second["node"] is None
    assert third["run_id"] is None and "node" in third


@pytest.mark.usefixtures("restore_logger")
def test_a_terminal_gets_text_and_info_is_hidden_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADRACE_LOG_FORMAT", raising=False)
    monkeypatch.delenv("HEADRACE_LOG_LEVEL", raising=False)
    stream = _Tty()
    configure_logging(stream)
    log = get_logger("runtime")
    with run_context("run-2", "p"):
        log.info("quiet")
        log.warning("loud", extra={"node": "output"})
    assert stream.getvalue() == "warning: [run-2 output] loud\n"


def test_redact_keeps_what_the_secret_was() -> None:
    text = redact(
        'headers {"x-api-key": "abcdef123456"} Bearer eyJhbGciOi.J9xyz AIzaSyA-1234567890abcdefghij', {}
    )
    assert "abcdef123456" not in text and "eyJhbGciOi" not in text and "AIzaSy" not in text
    assert '"x-api-key": "[redacted]' in text
