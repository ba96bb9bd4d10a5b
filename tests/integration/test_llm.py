"""LLM nodes on a real local Ray, through the real ``anthropic``, ``google-genai`` and ``openai`` SDKs,
against the loopback server: every row answered exactly once under injected faults, the cache, budgets,
the shared rate limit, fallbacks, structured output and dead letters."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.audit import AuditLog
from engine.check import check_file
from engine.runtime import RunSummary, run_checked
from operators.providers.pricing import PriceTable
from tests.cli import run_headrace
from tests.loopback import ErrorReply, Faults, LLMServer
from tests.loopback.openai_wire import OpenAIUsage

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["bug", "billing", "other"]
KEY = "sk-ant-test-SECRET-9f8e7d"


def expected_label(text: str) -> str:
    return LABELS[int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(LABELS)]


def label_responder(request: dict[str, Any]) -> Any:
    """Answers the label the row's text hashes to (the text follows 'Message: ' in the prompt)."""
    text = request["prompt"].split("Message: ", 1)[1].split("\n", 1)[0]
    label = expected_label(text)
    # Anthropic's forced tool and OpenAI's JSON schema take an object: the label is wrapped as "value"
    return {"value": label} if request["provider"] in ("anthropic", "openai") else label


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines read the key as ${HEADRACE_TEST_KEY}: a literal key in a pipeline is refused."""
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(responder=label_responder) as srv:
        yield srv


def write_rows(path: Path, rows: int) -> list[dict[str, Any]]:
    data = [
        {"id": i, "text": f"message number {i} about {'invoices' if i % 7 else 'a crash'}"}
        for i in range(rows)
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["id", "text"])
        writer.writeheader()
        writer.writerows(data)
    return data


def pipeline(
    tmp_path: Path,
    server: LLMServer,
    *,
    extra_top: str = "",
    node_extra: str = "",
    provider: str = "anthropic",
    out: str = "out",
) -> Path:
    text = f"""
version: 1
name: llm-test
{extra_top}
providers:
  anthropic:
    config: {{base_url: "{server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
  gemini:
    config: {{base_url: "{server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
  openai:
    config: {{base_url: "{server.openai_url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/rows.csv, column_types: {{id: int64, text: string}}}}
  classify:
    op: llm_classify
    input: input
    provider: {provider}
    prompt: "Classify.\\nMessage: {{{{ text }}}}\\n"
    labels: {json.dumps(LABELS)}
    concurrency: 32
    retry: {{max_attempts: 6, initial_backoff_s: 0.01, max_backoff_s: 0.05}}
{node_extra}
  output: {{op: write_parquet, input: classify, path: {tmp_path}/{out}, overwrite: true}}
"""
    path = tmp_path / f"{out}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(path: Path, *overrides: str, cache: bool = True, resume: str | None = None) -> RunSummary:
    return run_checked(check_file(str(path), overrides=overrides), progress=False, cache=cache, resume=resume)


def read_output(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder).sort_by("id").to_pylist()


def tokens_of(request: Any) -> int:
    """Input plus output tokens of one answer, in either provider's usage fields."""
    usage = request.usage
    if "input_tokens" in usage:
        return int(usage["input_tokens"] + usage["output_tokens"])
    if "prompt_tokens" in usage:
        return int(usage["prompt_tokens"] + usage["completion_tokens"])
    return int(usage["promptTokenCount"] + usage["candidatesTokenCount"])


def billed(server: LLMServer) -> list[Any]:
    inference = ("messages", "generateContent", "chat.completions")
    return [r for r in server.requests if r.endpoint in inference and r.status == 200]


def test_ten_thousand_rows_under_429s_and_500s_are_each_labelled_once(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    data = write_rows(tmp_path / "rows.csv", 10_000)
    server.faults = Faults(rate_429=0.20, rate_500=0.05, seed=7)
    summary = run(pipeline(tmp_path, server))
    assert summary.status == "succeeded", summary.error
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == [d["id"] for d in data]  # every row, once, none lost
    assert all(r["label"] == expected_label(r["text"]) for r in rows)
    answered = billed(server)
    faulted = [r for r in server.requests if r.fault is not None]
    assert {r.status for r in faulted} == {429, 500}
    assert len(answered) == 10_000  # a fault is retried, an answer is never asked for twice
    usage = summary.nodes["classify"].llm
    assert usage is not None
    assert usage["input_tokens"] == sum(r.usage["input_tokens"] for r in answered)
    assert usage["output_tokens"] == sum(r.usage["output_tokens"] for r in answered)
    price = PriceTable().price("anthropic", "claude-haiku-4-5")
    want = sum(price.cost(r.usage["input_tokens"], r.usage["output_tokens"]) for r in answered)
    assert summary.nodes["classify"].cost_usd == pytest.approx(want, rel=1e-9)
    assert usage["failed_requests"] == len(faulted)
    assert usage["rows"] == 10_000  # counted as each batch came back, for progress before splits end

    # a rerun answers every row from the cache: zero requests, zero cost, the same output
    server.clear()
    again = run(pipeline(tmp_path, server))
    assert again.status == "succeeded", again.error
    assert billed(server) == [] and server.requests == []
    assert again.nodes["classify"].llm["cached_requests"] == 10_000  # type: ignore[index]
    assert again.total_cost_usd == 0.0
    assert read_output(tmp_path / "out") == rows


def test_budget_stops_cleanly_and_resume_pays_only_for_unanswered_rows(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 3_000)
    price = PriceTable().price("anthropic", "claude-haiku-4-5")
    budget = 0.02
    small = pipeline(
        tmp_path, server, extra_top=f"budget: {{max_cost_usd: {budget}}}\ndefaults: {{batch_rows: 250}}"
    )
    summary = run(small)
    assert summary.status == "budget_exceeded", summary.error
    assert summary.exit_code == 4
    assert "max_cost_usd" in (summary.error or "") and "--resume" in (summary.error or "")
    answered = billed(server)
    spent = sum(price.cost(r.usage["input_tokens"], r.usage["output_tokens"]) for r in answered)
    assert summary.total_cost_usd == pytest.approx(spent)
    # calls in flight may finish past the budget, by at most their own reservations
    in_flight = 32 * price.cost(100, 1024)
    assert 0 < spent <= budget + in_flight
    # what was committed is whole and readable
    parts = sorted((tmp_path / "out").glob("*.parquet"))
    committed = [row for part in parts for row in pq.read_table(part).to_pylist()]
    assert all(r["label"] == expected_label(r["text"]) for r in committed)
    assert len(committed) < 3_000

    # a larger budget and --resume: every row answered, and no row asked for twice
    bigger = pipeline(tmp_path, server, extra_top="budget: {max_cost_usd: 10}\ndefaults: {batch_rows: 250}")
    resumed = run(bigger, resume=summary.run_id)
    assert resumed.status == "succeeded", resumed.error
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == list(range(3_000))
    prompts = [json.dumps(r.body["messages"]) for r in billed(server)]
    assert len(prompts) == len(set(prompts)) == 3_000


def test_two_pipelines_on_one_key_share_one_rate_limit(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 120)
    limit = "providers:\n  anthropic:\n    rate_limits: {requests_per_minute: 1200}\n"
    paths = []
    for name in ("one", "two"):
        path = pipeline(tmp_path, server, out=name)
        # the same rows, a different prompt per pipeline, so neither answers from the other's cache
        text = path.read_text().replace('"Classify.', f'"Classify ({name}).')
        text = text.replace("providers:\n  anthropic:\n    config:", limit.rstrip("\n") + "\n    config:")
        path.write_text(text)
        paths.append(path)
    results: list[RunSummary] = []
    threads = [threading.Thread(target=lambda p=p: results.append(run(p))) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]
    times = sorted(r.received_at for r in billed(server))
    assert len(times) == 240
    per_second, burst = 1200 / 60, 1200 / 60  # the limiter holds one second's worth as burst
    # In any 5-second window the server sees at most the rate plus one refill, with one second allowed
    # for wake-ups delayed on a busy 2-core machine. Two unshared limiters would allow about twice this.
    window = 5.0
    for i, start in enumerate(times):
        seen = sum(1 for t in times[i:] if t - start <= window)
        assert seen <= per_second * (window + 1.0) + burst, (start - times[0], seen)
    # and over the whole run: the rate plus the initial burst
    assert len(times) <= per_second * (times[-1] - times[0] + 1.0) + burst


def test_fallback_answers_when_the_first_provider_keeps_failing(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 200)

    def anthropic_down(request: dict[str, Any]) -> Any:
        if request["provider"] == "anthropic":
            raise ErrorReply(503, "overloaded for a while")
        return label_responder(request)

    server.responder = anthropic_down
    path = pipeline(tmp_path, server, node_extra="    fallback: [{provider: gemini}]")
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    rows = read_output(tmp_path / "out")
    assert len(rows) == 200 and all(r["label"] == expected_label(r["text"]) for r in rows)
    gemini = [r for r in billed(server) if r.provider == "gemini"]
    assert len(gemini) == 200 and {r.model for r in gemini} == {"gemini-2.5-flash"}


def test_answers_outside_the_labels_are_dead_lettered_with_their_row(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 300)

    def sometimes_wrong(request: dict[str, Any]) -> Any:
        if "number 1" in request["prompt"]:  # ids 1, 10-19, 100-199
            return {"value": "spam"}  # not a label (the loopback server does not enforce the enum)
        return label_responder(request)

    server.responder = sometimes_wrong
    dead = tmp_path / "dead"
    path = pipeline(
        tmp_path, server, node_extra=f"    on_error: {{mode: dead_letter, dead_letter_path: {dead}}}"
    )
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    wrong = {i for i in range(300) if str(i).startswith("1")}
    rows = read_output(tmp_path / "out")
    assert {r["id"] for r in rows} == set(range(300)) - wrong
    letters = [json.loads(line) for f in sorted(dead.glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert {d["row"]["id"] for d in letters} == wrong
    assert all(d["node"] == "classify" and "'spam'" in d["error"] for d in letters)
    assert summary.nodes["classify"].failed == len(wrong)
    # the API key is nowhere in what the run wrote or reported
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert all(KEY.encode() not in p.read_bytes() for p in written)
    assert KEY not in json.dumps(summary.as_dict()) and KEY not in summary.render()
    # the audit log has the run's start and finish, and no key either
    log = AuditLog()
    mine = [e for e in log.entries() if e.get("run_id") == summary.run_id]
    assert [e["event"] for e in mine] == ["run_started", "run_finished"]
    assert mine[1]["status"] == "succeeded" and mine[1]["cost_usd"] == summary.total_cost_usd
    assert mine[0]["pipeline_hash"] and mine[0]["inputs"] == [f"{tmp_path}/rows.csv"]
    assert KEY not in log.path.read_text() and log.verify() == []


def test_extract_retries_invalid_answers_with_the_error_fed_back(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    write_rows(tmp_path / "rows.csv", 50)

    def extractor(request: dict[str, Any]) -> Any:
        number = int(request["prompt"].split("message number ", 1)[1].split(" ", 1)[0])
        if number % 5 == 0 and "not accepted" not in request["prompt"]:
            return {"topic": "x", "urgency": "eleven"}  # wrong type: urgency must be an integer
        return {"topic": "crash" if "crash" in request["prompt"] else "invoice", "urgency": number % 3}

    server.responder = extractor
    path = tmp_path / "extract.yaml"
    path.write_text(
        f"""
version: 1
name: extract-test
providers:
  anthropic: {{config: {{base_url: "{server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/rows.csv, column_types: {{id: int64, text: string}}}}
  extract:
    op: llm_extract
    input: input
    provider: anthropic
    prompt: "Extract: {{{{ text }}}}"
    output_schema:
      type: object
      properties:
        topic: {{type: string}}
        urgency: {{type: integer, minimum: 0}}
      required: [topic, urgency]
  output: {{op: write_parquet, input: extract, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(tmp_path / "out").sort_by("id")
    assert str(table.schema.field("extracted").type) == "struct<topic: string, urgency: int64>"
    rows = table.to_pylist()
    assert [r["extracted"]["urgency"] for r in rows] == [i % 3 for i in range(50)]
    retried = [r for r in billed(server) if "not accepted" in json.dumps(r.body)]
    assert len(retried) == 10  # ids 0, 5, ..., 45: each asked once more, with the error quoted
    assert all("urgency" in json.dumps(r.body) for r in retried)


def test_batch_mode_answers_through_the_batch_api_at_the_batch_price(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    server.batch_delay_s = 0.3
    write_rows(tmp_path / "rows.csv", 400)
    path = pipeline(tmp_path, server, node_extra="    mode: batch\n    batch_poll_s: 0.1")
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    rows = read_output(tmp_path / "out")
    assert len(rows) == 400 and all(r["label"] == expected_label(r["text"]) for r in rows)
    endpoints = {r.endpoint for r in server.requests}
    assert "messages" not in endpoints and "batches.create" in endpoints
    creates = [r for r in server.requests if r.endpoint == "batches.create"]
    assert sum(len(r.body["requests"]) for r in creates) == 400
    usage = summary.nodes["classify"].llm
    assert usage is not None and usage["requests"] == 400 and usage["rows"] == 400
    price = PriceTable().price("anthropic", "claude-haiku-4-5")
    full = price.cost(usage["input_tokens"], usage["output_tokens"])
    assert summary.nodes["classify"].cost_usd == pytest.approx(full * (1 - price.batch_discount))
    assert price.batch_discount == 0.5


def test_llm_reduce_summarises_each_group_in_rounds_that_fit_the_context(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    with (tmp_path / "reviews.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["product", "review"])
        for i in range(90):
            writer.writerow([["lamp", "desk", "chair"][i % 3], f"review {i}: " + "fine " * 10])

    def summariser(request: dict[str, Any]) -> Any:
        items = [line for line in request["prompt"].splitlines() if line.startswith("- ")]
        return f"summary of {len(items)} for {request['prompt'].split(':', 1)[0]}"

    server.responder = summariser
    path = tmp_path / "reduce.yaml"
    path.write_text(
        f"""
version: 1
name: reduce-test
providers:
  anthropic: {{config: {{base_url: "{server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/reviews.csv}}
  summarise:
    op: llm_reduce
    input: input
    provider: anthropic
    group_by: [product]
    item: "{{{{ review }}}}"
    prompt: "{{{{ group.product }}}}:\\n{{% for i in items %}}- {{{{ i }}}}\\n{{% endfor %}}"
    max_input_tokens: 200
    max_tokens: 50
  output: {{op: write_parquet, input: summarise, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    rows = pq.read_table(tmp_path / "out").sort_by("product").to_pylist()
    assert [r["product"] for r in rows] == ["chair", "desk", "lamp"]
    assert all(
        r["summary"].startswith("summary of ") and r["summary"].endswith(f"for {r['product']}") for r in rows
    )
    calls = billed(server)
    # 30 reviews of ~60 characters per group cannot fit one 600-character call: several rounds each
    assert len(calls) > 3 * 2
    prompts = [r.body["messages"][-1]["content"] for r in calls]
    assert all(len(p) <= 200 * 3 for p in prompts)
    # every review went into exactly one first-round prompt
    firsts = [line for p in prompts for line in p.splitlines() if line.startswith("- review ")]
    assert len(firsts) == 90


EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"


def test_openai_rows_under_429s_and_500s_are_each_labelled_once_and_priced_with_cached_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    data = write_rows(tmp_path / "rows.csv", 1_500)
    usage_extra = OpenAIUsage(cached_tokens=5, reasoning_tokens=12)
    faults = Faults(rate_429=0.20, rate_500=0.05, seed=11)
    with LLMServer(responder=label_responder, faults=faults, openai_usage=usage_extra) as server:
        summary = run(pipeline(tmp_path, server, provider="openai"))
        requests = server.requests
    assert summary.status == "succeeded", summary.error
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == [d["id"] for d in data]
    assert all(r["label"] == expected_label(r["text"]) for r in rows)
    answered = [r for r in requests if r.endpoint == "chat.completions" and r.status == 200]
    assert len(answered) == 1_500 and {r.status for r in requests if r.fault} == {429, 500}
    usage = summary.nodes["classify"].llm
    assert usage is not None and usage["failed_requests"] == sum(1 for r in requests if r.fault)
    assert usage["output_tokens"] == sum(r.usage["completion_tokens"] for r in answered)  # reasoning too
    price = PriceTable().price("openai", "gpt-5-mini")
    cached = sum(r.usage["prompt_tokens_details"]["cached_tokens"] for r in answered)
    plain = sum(r.usage["prompt_tokens"] for r in answered) - cached
    want = price.cost(plain, usage["output_tokens"], cache_read_tokens=cached)
    assert cached == 5 * 1_500 and summary.nodes["classify"].cost_usd == pytest.approx(want, rel=1e-9)


def test_openai_batch_mode_goes_through_files_and_batches_at_the_batch_price(
    tmp_path: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    server.batch_delay_s = 0.3
    write_rows(tmp_path / "rows.csv", 300)
    node_extra = "    mode: batch\n    batch_poll_s: 0.1"
    summary = run(pipeline(tmp_path, server, provider="openai", node_extra=node_extra))
    assert summary.status == "succeeded", summary.error
    rows = read_output(tmp_path / "out")
    assert len(rows) == 300 and all(r["label"] == expected_label(r["text"]) for r in rows)
    endpoints = [r.endpoint for r in server.requests]
    assert "chat.completions" not in endpoints
    assert endpoints.count("files.create") == endpoints.count("openai.batches.create") >= 1
    assert "files.content" in endpoints
    usage = summary.nodes["classify"].llm
    assert usage is not None and usage["requests"] == 300
    price = PriceTable().price("openai", "gpt-5-mini")
    full = price.cost(usage["input_tokens"], usage["output_tokens"])
    assert summary.nodes["classify"].cost_usd == pytest.approx(full * 0.5)


def test_llm_extract_example_writes_the_schema_as_a_struct(tmp_path: Path, server: LLMServer) -> None:
    server.responder = None  # the server answers a small valid instance of the schema
    env = {
        "HEADRACE_OUT": str(tmp_path / "out"),
        "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": KEY,
    }
    proc = run_headrace(
        "run",
        EXAMPLES / "llm_extract.yaml",
        "--json",
        "--set=providers.anthropic.rate_limits.requests_per_minute=60000",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out" / "llm_extract")
    assert (
        str(table.schema.field("extracted").type) == "struct<area: string, urgency: int64, summary: string>"
    )
    assert table.num_rows == 48
    assert all(
        row["area"] in ("app", "billing", "account", "other") for row in table.column("extracted").to_pylist()
    )


def test_an_llm_node_whose_filter_passes_no_row_answers_an_empty_batch(tmp_path: Path) -> None:
    """A filter before an LLM node that keeps no row hands the pool an empty batch: the run succeeds
    with an empty output (it crashed with an IndexError in the all-rows-failed-to-render check)."""
    write_rows(tmp_path / "rows.csv", 20)
    path = tmp_path / "empty.yaml"
    path.write_text(
        f"""version: 1
name: empty-batch
nodes:
  input: {{op: read_csv, path: {tmp_path}/rows.csv, column_types: {{id: int64, text: string}}}}
  none: {{op: filter, input: input, where: "id < 0"}}
  classify: {{op: llm_classify, input: none, provider: offline, prompt: "{{{{ text }}}}", labels: [a, b]}}
  output: {{op: write_parquet, input: classify, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    assert summary.status == "succeeded", summary.error
    assert summary.nodes["input"].rows == 20 and summary.nodes["classify"].rows == 0
    assert pq.read_table(tmp_path / "out").num_rows == 0
