"""LLM runs through the real ``headrace`` command, each on the local Ray the command starts: the shipped
examples on either provider and on an OpenAI-compatible server, and kill -9 of the CLI then ``--resume``.

They need no Ray in the test process (so they run beside the tests on the session's shared Ray)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from tests.cli import HEADRACE, run_headrace
from tests.integration.test_llm import (
    EXAMPLES,
    KEY,
    ROOT,
    billed,
    expected_label,
    label_responder,
    pipeline,
    read_output,
    tokens_of,
    write_rows,
)
from tests.loopback import LLMServer

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines read the key as ${HEADRACE_TEST_KEY}: a literal key in a pipeline is refused."""
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(responder=label_responder) as srv:
        yield srv


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_llm_classify_example_runs_on_either_provider_from_sdk_variables(
    tmp_path: Path, server: LLMServer, provider: str
) -> None:
    env = {
        "HEADRACE_OUT": str(tmp_path / "out"),
        "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": KEY,
        "GOOGLE_GEMINI_BASE_URL": server.url,
        "GEMINI_API_KEY": KEY,
    }
    proc = run_headrace(
        "run",
        EXAMPLES / "llm_classify.yaml",
        "--json",
        f"--set=nodes.classify.provider={provider}",
        # the example's limits suit a new account (50 requests a minute); the loopback server has none
        f"--set=providers.{provider}.rate_limits.requests_per_minute=60000",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    node = result["nodes"]["classify"]
    answered = billed(server)
    assert {r.provider for r in answered} == {provider} and len(answered) == node["llm"]["requests"] == 48
    assert node["tokens"] == sum(tokens_of(r) for r in answered)
    assert result["total_cost_usd"] == node["cost_usd"] > 0
    table = pq.read_table(tmp_path / "out" / "llm_classify")
    assert table.column_names == ["id", "text", "label"]
    source = list(csv.DictReader((EXAMPLES / "data" / "messages.csv").open(encoding="utf-8")))
    labels = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True))
    assert labels == {int(r["id"]): expected_label(r["text"]) for r in source}
    assert KEY not in proc.stdout + proc.stderr


def test_llm_openai_compatible_example_runs_against_the_server_in_openai_base_url(
    tmp_path: Path, server: LLMServer
) -> None:
    env = {
        "HEADRACE_OUT": str(tmp_path / "out"),
        "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        "OPENAI_BASE_URL": server.openai_url,
        "OPENAI_API_KEY": KEY,
    }
    proc = run_headrace("run", EXAMPLES / "llm_openai_compatible.yaml", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    node = result["nodes"]["classify"]
    answered = billed(server)
    assert {(r.provider, r.model) for r in answered} == {("openai", "Qwen/Qwen2.5-7B-Instruct")}
    assert len(answered) == node["llm"]["requests"] == 48
    fmt = answered[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert node["tokens"] == sum(tokens_of(r) for r in answered)
    assert result["total_cost_usd"] == 0.0  # a self-hosted model, priced at 0 in the example
    table = pq.read_table(tmp_path / "out" / "llm_openai_compatible")
    source = list(csv.DictReader((EXAMPLES / "data" / "messages.csv").open(encoding="utf-8")))
    labels = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True))
    assert labels == {int(r["id"]): expected_label(r["text"]) for r in source}
    assert KEY not in proc.stdout + proc.stderr


def test_kill_9_mid_run_then_resume_asks_only_for_rows_not_yet_answered(
    tmp_path: Path, server: LLMServer
) -> None:
    server.latency_s = 0.02
    write_rows(tmp_path / "rows.csv", 2_000)
    path = pipeline(tmp_path, server, extra_top="defaults: {batch_rows: 200}")
    env = {
        **os.environ,
        "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        "HEADRACE_OBJECT_STORE_BYTES": str(256 * 1024 * 1024),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [*HEADRACE, "run", str(path), "--json"]
    driver = subprocess.Popen(
        [*cmd, "--run-id", "run-killed"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ray_processes: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while len(billed(server)) < 600:
            assert driver.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "too few requests in time"
            time.sleep(0.05)
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        for proc in ray_processes:  # the driver's local Ray outlives a SIGKILL
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    before = len(billed(server))
    assert before < 2_000
    resumed = subprocess.run(
        [*cmd, "--resume", "run-killed"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == list(range(2_000))
    assert all(r["label"] == expected_label(r["text"]) for r in rows)
    prompts = [json.dumps(r.body["messages"]) for r in billed(server)]
    # only answers lost in flight at the kill (at most `concurrency` of them) are asked for twice
    assert len(set(prompts)) == 2_000
    assert len(prompts) - 2_000 <= 32
    summary = json.loads(resumed.stdout)
    assert summary["nodes"]["classify"]["llm"]["cached_requests"] >= before - 32
