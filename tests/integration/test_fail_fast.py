"""Errors no row can fix stop the run at once, even under ``on_error: dead_letter``: a refused key (401,
403), an unknown model (404), a prompt template no row can render; a circuit breaker stops a run whose
provider fails nearly every call after all retries. Real SDKs against the loopback server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.check import check_file
from engine.runtime import RunSummary, run_checked
from tests.loopback import ErrorReply, LLMServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]
ROWS = 200


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_CHECKPOINTS", f"sqlite:///{tmp_path}/runs.db")
    monkeypatch.setenv("HEADRACE_TEST_KEY", "a-wrong-key")  # servers that check keys expect another


def _pipeline(
    tmp_path: Path, url: str, *, prompt: str = "Classify {{ text }}", provider: str = "anthropic"
) -> Path:
    lines = ["id,text"] + [f"{i},row {i}" for i in range(ROWS)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = "claude-haiku-4-5" if provider == "anthropic" else "gemini-2.5-flash"
    path = tmp_path / "llm.yaml"
    path.write_text(
        f"""version: 1
name: fail-fast
providers:
  {provider}:
    config: {{base_url: "{url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/in.csv, batch_rows: 20}}
  classify:
    op: llm_classify
    input: input
    provider: {provider}
    model: {model}
    prompt: "{prompt}"
    labels: [a, b]
    retry: {{max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}}
    on_error: {{mode: dead_letter, dead_letter_path: {tmp_path}/dead}}
  output: {{op: write_parquet, input: classify, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    return path


def _run(path: Path) -> RunSummary:
    summary = run_checked(check_file(str(path)), progress=False, cache=False)
    assert isinstance(summary, RunSummary)
    return summary


def _refusing(status: int, message: str) -> Callable[[Any], Any]:
    def refuse(request: Any) -> Any:
        raise ErrorReply(status, message)

    return refuse


@pytest.mark.parametrize(("provider", "status"), [("anthropic", 401), ("gemini", 400)])
def test_a_refused_key_stops_the_run_at_once_even_under_dead_letter(
    tmp_path: Path, provider: str, status: int
) -> None:
    # the server checks the key and answers a wrong one as each API does: anthropic 401, Google 400
    # INVALID_ARGUMENT with the ErrorInfo reason API_KEY_INVALID
    with LLMServer(api_key="the-right-key") as server:
        summary = _run(_pipeline(tmp_path, server.url, provider=provider))
        sent = len(server.requests)
    assert summary.status == "failed" and summary.exit_code == 3, summary.error
    error = summary.error or ""
    assert f"HTTP {status}" in error and "authentication failed" in error, error
    model = "claude-haiku-4-5" if provider == "anthropic" else "gemini-2.5-flash"
    assert f"{provider}/{model}" in error and "node 'classify'" in error
    variable = "$ANTHROPIC_API_KEY" if provider == "anthropic" else "$GEMINI_API_KEY"
    assert variable in error and f"providers.{provider}.config.api_key" in error
    assert sent < ROWS // 2, sent  # stopped at once: not one refused call per row
    assert not list((tmp_path / "dead").glob("*.jsonl"))  # nothing dead-lettered: no row was at fault


@pytest.mark.parametrize(
    ("status", "words"), [(403, "permission denied"), (404, "the model (or the endpoint) does not exist")]
)
def test_a_forbidden_key_or_an_unknown_model_stops_the_run_at_once(
    tmp_path: Path, status: int, words: str
) -> None:
    with LLMServer(responder=_refusing(status, "no such model or not yours")) as server:
        summary = _run(_pipeline(tmp_path, server.url))
        sent = len(server.requests)
    assert summary.status == "failed" and f"HTTP {status}" in (summary.error or "")
    assert words in (summary.error or "") and "anthropic/claude-haiku-4-5" in (summary.error or "")
    assert sent < ROWS // 2, sent


def test_a_template_no_row_can_render_stops_the_run(tmp_path: Path) -> None:
    with LLMServer() as server:
        summary = _run(_pipeline(tmp_path, server.url, prompt="Classify {{ ticket.body }}"))
        sent = len(server.requests)
    assert summary.status == "failed", summary.error
    assert "prompt template failed on all 20 rows" in (summary.error or ""), summary.error
    assert sent == 0 and not list((tmp_path / "dead").glob("*.jsonl"))


def test_a_template_failing_on_some_rows_only_dead_letters_them(tmp_path: Path) -> None:
    # rows whose text has no digit 7 render; the others fail: bad rows, not a bad template
    prompt = "{% if '7' in text %}{{ text.missing.deeper }}{% endif %}Classify {{ text }}"
    with LLMServer() as server:
        summary = _run(_pipeline(tmp_path, server.url, prompt=prompt))
    assert summary.status == "succeeded", summary.error
    assert summary.nodes["classify"].failed == sum("7" in f"row {i}" for i in range(ROWS))


def test_a_provider_failing_nearly_every_call_trips_the_circuit_breaker(tmp_path: Path) -> None:
    with LLMServer(responder=_refusing(503, "overloaded, try later")) as server:
        summary = _run(_pipeline(tmp_path, server.url))
        sent = len(server.requests)
    assert summary.status == "failed", summary.error
    assert "circuit breaker" in (summary.error or "") and "HTTP 503" in (summary.error or "")
    assert sent < ROWS * 2, sent  # without it: every row, twice (two attempts), all dead-lettered
