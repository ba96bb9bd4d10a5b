"""`headrace estimate`: each LLM node's rows, calls, tokens and cost, predicted from a sample, with no Ray."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.estimate import Estimate, EstimateOptions, estimate_checked
from operators.llm import LlmSpec
from operators.llm_rows import RowTask, Target
from operators.providers.base import LlmRequest, LlmResponse
from operators.providers.cache import ResponseCache
from operators.providers.offline import OfflineProvider
from operators.providers.pricing import PriceTable
from tests.loopback import LLMServer, wire
from tests.unit.helpers import assert_no_traceback, diagnostic_lines, invoke, run_process, write

ROWS = [
    {"id": i, "body": f"Ticket {i}: " + " ".join(["the app crashes, again"] * (1 + i % 5)) + f' "case {i}"'}
    for i in range(30)
]

PIPELINE = """\
version: 1
name: triage
defaults: {provider: offline}
nodes:
  input:
    op: read_csv
    path: tickets.csv
    columns: [id, body]
    column_types: {id: int64, body: string}
  classify:
    op: llm_classify
    input: input
    prompt: "Classify this support ticket: {{ body }}"
    labels: [bug, billing, other]
  extract:
    op: llm_extract
    input: classify
    prompt: "Extract the fields of this {{ label }} ticket: {{ body }}"
    output_schema:
      type: object
      properties:
        summary: {type: string}
        urgency: {type: integer, minimum: 1}
      required: [summary, urgency]
  output:
    op: write_parquet
    input: extract
    path: out
"""
"""Line 13 holds classify's prompt."""

ANTHROPIC = ("--set", "defaults.provider=anthropic", "--set", "defaults.model=claude-haiku-4-5")


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines read keys as ${HEADRACE_TEST_KEY}: a literal key in a pipeline is refused."""
    monkeypatch.setenv("HEADRACE_TEST_KEY", "test-key")


def _csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    _csv(tmp_path / "tickets.csv", ROWS)
    return write(tmp_path / "pipeline.yaml", PIPELINE)


def _estimate(path: Path, *overrides: str, **options: Any) -> Estimate:
    pairs = [overrides[i + 1] for i in range(0, len(overrides), 2)]  # ("--set", "K=V", ...) -> K=V
    return estimate_checked(check_file(str(path), overrides=pairs), EstimateOptions(**options))


def _offline_usage(path: Path) -> dict[str, tuple[int, int]]:
    """Input and output tokens the offline provider reports when it answers every row, node by node."""
    spec = check_file(str(path)).loaded.spec
    classify: LlmSpec = spec.nodes["classify"]  # type: ignore[assignment]
    extract: LlmSpec = spec.nodes["extract"]  # type: ignore[assignment]
    target = Target("offline", "offline")

    async def answer_all() -> dict[str, tuple[int, int]]:
        provider = OfflineProvider()
        usage = {"classify": (0, 0), "extract": (0, 0)}
        for row in ROWS:
            label = await provider.call(RowTask(classify, {}).request(row, target))
            extracted = await provider.call(
                RowTask(extract, {}).request({**row, "label": label.text}, target)
            )
            for node, response in (("classify", label), ("extract", extracted)):
                tokens_in, tokens_out = usage[node]
                usage[node] = (tokens_in + response.input_tokens, tokens_out + response.output_tokens)
        return usage

    return asyncio.run(answer_all())


# --- rows, tokens, cost -----------------------------------------------------------------------------


def test_a_small_file_gives_exact_rows_and_the_offline_providers_token_counts(pipeline: Path) -> None:
    result = _estimate(pipeline)
    source = result.sources["input"]
    assert (source.rows, source.basis) == (30, "exact")
    actual = _offline_usage(pipeline)
    for name in ("classify", "extract"):
        node = result.nodes[name]
        assert (node.rows, node.calls, node.rows_basis) == (30, 30, "exact")
        tokens_in, tokens_out = actual[name]
        assert node.input_tokens == pytest.approx(tokens_in, rel=0.2)
        assert node.output_tokens >= tokens_out  # the longest label, never fewer
        assert node.expected_usd == node.worst_case_usd == 0.0  # offline is free
    # the schema instance has the size of the offline provider's answers
    assert result.nodes["extract"].output_tokens == actual["extract"][1]
    assert result.method["count_tokens"] == "local"


def test_cost_is_the_price_table_with_the_pipelines_overrides_and_batch_prices(pipeline: Path) -> None:
    overrides = {"claude-haiku-4-5": {"input": 2.0, "output": 8.0}}
    result = _estimate(
        pipeline,
        *ANTHROPIC,
        "--set",
        "providers.anthropic.prices={claude-haiku-4-5: {input: 2.0, output: 8.0}}",
        "--set",
        "nodes.extract.mode=batch",
    )
    price = PriceTable(overrides).price("anthropic", "claude-haiku-4-5")
    assert price.batch_discount > 0
    for name, batch in (("classify", False), ("extract", True)):
        node = result.nodes[name]
        assert (node.provider, node.model, node.mode) == ("anthropic", "claude-haiku-4-5", node.mode)
        assert node.expected_usd == price.cost(node.input_tokens, node.output_tokens, batch=batch)
        worst = price.cost(node.worst_case_input_tokens, node.worst_case_output_tokens, batch=batch)
        assert node.worst_case_usd == worst > node.expected_usd > 0
    extract = result.nodes["extract"]
    assert extract.worst_case_output_tokens == 30 * 1024 * 3  # max_tokens, every one of max_attempts
    assert result.total["expected_usd"] == pytest.approx(sum(n.expected_usd for n in result.nodes.values()))


def test_llm_map_output_tokens_are_an_assumption_that_can_be_given(pipeline: Path) -> None:
    text = PIPELINE.replace(
        """    output_schema:
      type: object
      properties:
        summary: {type: string}
        urgency: {type: integer, minimum: 1}
      required: [summary, urgency]
""",
        "    max_tokens: 100\n",
    ).replace("op: llm_extract", "op: llm_map")
    write(pipeline, text)
    node = _estimate(pipeline).nodes["extract"]
    assert node.output_tokens == 30 * 100  # min(max_tokens, 256)
    assert node.output_tokens_basis.startswith("assumed")
    assert _estimate(pipeline, output_tokens=40).nodes["extract"].output_tokens == 30 * 40


# --- the sample -------------------------------------------------------------------------------------


def test_a_large_file_is_scaled_by_bytes_and_a_filter_by_its_sampled_selectivity(tmp_path: Path) -> None:
    rows = [{"id": i, "body": f"row {i} " + "x" * (i % 200)} for i in range(6000)]
    _csv(tmp_path / "tickets.csv", rows)
    text = PIPELINE.replace(
        '    input: input\n    prompt: "Classify', '    input: some\n    prompt: "Classify'
    )
    text = text.replace(
        "  classify:\n", '  some:\n    op: filter\n    input: input\n    where: "id % 3 = 0"\n  classify:\n'
    )
    path = write(tmp_path / "pipeline.yaml", text)
    result = _estimate(path, sample_rows=300)
    source = result.sources["input"]
    assert source.basis == "estimated" and 300 <= source.sampled_rows < 6000
    assert source.rows == pytest.approx(6000, rel=0.05)
    node = result.nodes["classify"]
    assert node.rows_basis == "estimated"
    assert node.sampled_rows == pytest.approx(source.sampled_rows / 3, abs=32)  # each range's own third
    assert node.rows == pytest.approx(2000, rel=0.05)


def test_parquet_rows_come_from_the_metadata(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(1000)), "body": [f"ticket number {i}" for i in range(1000)]})
    pq.write_table(table, tmp_path / "tickets.parquet", row_group_size=300)
    text = PIPELINE.replace("op: read_csv", "op: read_parquet").replace("tickets.csv", "tickets.parquet")
    path = write(
        tmp_path / "pipeline.yaml", text.replace("    column_types: {id: int64, body: string}\n", "")
    )
    result = _estimate(path, sample_rows=48)
    assert (result.sources["input"].rows, result.sources["input"].basis) == (1000, "exact")
    # 12 rows from each of the 4 row groups, each standing for its 300 (or 100) rows
    assert (result.nodes["classify"].rows, result.nodes["classify"].sampled_rows) == (1000, 48)


@pytest.mark.parametrize(
    ("barrier", "rows", "basis"),
    [
        ("{op: limit, input: input, n: 7}", 7, "exact"),
        ("{op: limit, input: input, n: 500}", 30, "exact"),
        ("{op: dedupe, input: input, keys: [id]}", 30, "exact"),
        ("{op: llm_filter, input: input, prompt: 'Is this urgent? {{ body }}'}", 30, "upper bound"),
    ],
)
def test_rows_after_a_barrier_or_an_llm_filter(pipeline: Path, barrier: str, rows: int, basis: str) -> None:
    text = PIPELINE.replace(
        '    input: input\n    prompt: "Classify', '    input: gate\n    prompt: "Classify'
    )
    write(pipeline, text.replace("  classify:\n", f"  gate: {barrier}\n  classify:\n"))
    node = _estimate(pipeline).nodes["classify"]
    assert (node.rows, node.rows_basis) == (rows, basis)


def test_a_limit_or_dedupe_on_part_of_the_input(pipeline: Path) -> None:
    _csv(pipeline.parent / "tickets.csv", ROWS * 100)  # ids repeat: dedupe keeps 30 of 3,000
    write(
        pipeline,
        PIPELINE.replace('    input: input\n    prompt: "Classify', '    input: gate\n    prompt: "Classify'),
    )
    text = pipeline.read_text()
    limited = text.replace("  classify:\n", "  gate: {op: limit, input: input, n: 7}\n  classify:\n")
    write(pipeline, limited)
    node = _estimate(pipeline, sample_rows=10).nodes["classify"]
    assert (node.rows, node.rows_basis) == (7, "exact")  # the sample alone fills the limit
    deduped = text.replace("  classify:\n", "  gate: {op: dedupe, input: input, keys: [id]}\n  classify:\n")
    write(pipeline, deduped)
    node = _estimate(pipeline, sample_rows=10).nodes["classify"]
    assert node.rows_basis == "upper bound" and node.rows == pytest.approx(3000, rel=0.1)
    assert any("dedupe" in note for note in node.notes)


def test_keep_scales_the_rows_after_an_llm_filter(pipeline: Path) -> None:
    text = PIPELINE.replace(
        '    input: input\n    prompt: "Classify', '    input: gate\n    prompt: "Classify'
    )
    gate = "  gate: {op: llm_filter, input: input, prompt: 'Urgent? {{ body }}'}\n"
    write(pipeline, text.replace("  classify:\n", gate + "  classify:\n"))
    result = invoke("estimate", str(pipeline), "--keep", "gate=0.5", "--json")
    assert result.exit_code == 0, result.output
    nodes = json.loads(result.stdout)["nodes"]
    assert (nodes["gate"]["rows"], nodes["classify"]["rows"], nodes["classify"]["rows_basis"]) == (
        30,
        15,
        "estimated",
    )
    bad = invoke("estimate", str(pipeline), "--keep", "classify=0.5")
    assert bad.exit_code == 2 and "not an llm_filter node" in bad.stderr


# --- the cache --------------------------------------------------------------------------------------


def test_with_cache_counts_cached_rows_as_free(pipeline: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    write(pipeline, PIPELINE.replace("nodes:\n", f"cache: {{url: {cache_dir}}}\nnodes:\n", 1))
    spec: LlmSpec = check_file(str(pipeline)).loaded.spec.nodes["classify"]  # type: ignore[assignment]
    request = RowTask(spec, {}).request(ROWS[0], Target("anthropic", "claude-haiku-4-5"))
    answer = LlmResponse("billing", "billing", 100, 5, "claude-haiku-4-5", 0.1)
    ResponseCache(str(cache_dir)).put(request, answer)
    result = _estimate(pipeline, *ANTHROPIC, with_cache=True)
    classify = result.nodes["classify"]
    assert (classify.rows, classify.calls, classify.cached_calls) == (30, 29, 1)
    assert result.method["cache"] == str(cache_dir)
    assert _estimate(pipeline, *ANTHROPIC).nodes["classify"].cached_calls is None
    cli = invoke("estimate", str(pipeline), *ANTHROPIC, "--with-cache")
    assert cli.exit_code == 0 and "cached" in cli.stdout


# --- the command ------------------------------------------------------------------------------------


def test_json_is_one_object_from_the_real_command(pipeline: Path) -> None:
    proc = run_process("estimate", str(pipeline), "--json", *ANTHROPIC)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"pipeline", "nodes", "total", "method"} <= set(data)
    assert data["pipeline"] == "triage" and set(data["nodes"]) == {"classify", "extract"}
    classify = data["nodes"]["classify"]
    assert classify["provider"] == "anthropic" and classify["rows"] == 30
    assert data["total"]["calls"] == 60
    assert data["total"]["expected_usd"] == pytest.approx(
        sum(n["expected_usd"] for n in data["nodes"].values())
    )
    assert data["method"]["count_tokens"] == "local" and "sources" in data["method"]


def test_the_table_names_each_node_and_the_assumptions(pipeline: Path) -> None:
    result = invoke("estimate", str(pipeline), *ANTHROPIC)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("node"))
    for column in (
        "provider/model",
        "rows",
        "calls",
        "input tokens",
        "output tokens",
        "expected $",
        "worst-case $",
    ):
        assert column in header
    assert any(line.startswith("classify") and "anthropic/claude-haiku-4-5" in line for line in lines)
    assert any(line.startswith("total") for line in lines)
    assert "local: about 4 characters a token" in result.stdout
    assert "output tokens: the labels' mean length" in result.stdout


def test_count_tokens_api_asks_the_anthropic_endpoint(pipeline: Path) -> None:
    with LLMServer() as server:
        config = (
            "--set",
            f"providers.anthropic.config={{base_url: '{server.url}', api_key: '${{HEADRACE_TEST_KEY}}'}}",
        )
        result = invoke("estimate", str(pipeline), *ANTHROPIC, *config, "--count-tokens", "api", "--json")
        assert result.exit_code == 0, result.output
        asked = [r for r in server.requests if r.endpoint == "count_tokens"]
    assert len(asked) == len(server.requests) == 60  # one per distinct sampled request, nothing else
    nodes = json.loads(result.stdout)["nodes"]
    for name, prefix in (("classify", "Classify"), ("extract", "Extract")):
        counts = [
            wire.parse_anthropic({**r.body, "max_tokens": 1}).input_tokens
            for r in asked
            if r.body["messages"][0]["content"].startswith(prefix)
        ]
        assert len(counts) == 30
        assert nodes[name]["input_tokens"] == sum(counts)
        assert nodes[name]["input_tokens_method"].startswith("api: anthropic")


def test_count_tokens_api_without_a_key_is_a_located_error(
    pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = invoke("estimate", str(pipeline), *ANTHROPIC, "--count-tokens", "api")
    assert result.exit_code == 1
    (line,) = diagnostic_lines(result.stderr)
    assert line["path"] == str(pipeline) and line["severity"] == "error"
    assert "no API key" in line["message"]
    assert_no_traceback(result.stdout, result.stderr)


def test_a_budget_smaller_than_the_estimate_is_a_located_warning(pipeline: Path) -> None:
    write(pipeline, PIPELINE.replace("defaults:", "budget: {max_cost_usd: 0.0001}\ndefaults:"))
    result = invoke("estimate", str(pipeline), *ANTHROPIC)
    assert result.exit_code == 0, result.output
    (line,) = diagnostic_lines(result.stderr)
    assert (line["path"], line["line"], line["severity"]) == (str(pipeline), "3", "warning")
    assert "expected LLM cost" in line["message"] and "budget.max_cost_usd" in line["message"]


def test_a_node_budget_under_the_worst_case_warns_that_the_run_may_stop(pipeline: Path) -> None:
    expected = _estimate(pipeline, *ANTHROPIC).nodes["extract"]
    between = (expected.expected_usd + expected.worst_case_usd) / 2
    result = invoke(
        "estimate",
        str(pipeline),
        *ANTHROPIC,
        "--json",
        "--set",
        f"nodes.extract.budget.max_cost_usd={between}",
    )
    assert result.exit_code == 0, result.output
    (warning,) = json.loads(result.stdout)["warnings"]
    assert warning["severity"] == "warning" and warning["message"].startswith("worst-case 'extract' cost")
    assert "nodes.extract.budget.max_cost_usd" in warning["message"]


def test_an_unknown_column_in_a_prompt_is_a_load_time_error(pipeline: Path) -> None:
    write(pipeline, PIPELINE.replace("support ticket: {{ body }}", "support ticket: {{ bodyy }}"))
    result = invoke("estimate", str(pipeline))
    assert result.exit_code == 1
    (line,) = diagnostic_lines(result.stderr)
    assert (line["path"], line["line"], line["severity"]) == (str(pipeline), "13", "error")
    assert "bodyy" in line["message"] and line["col"] == "13"
    assert result.stdout == ""


def test_a_missing_input_file_exits_1_with_the_node_named(pipeline: Path) -> None:
    result = invoke("estimate", str(pipeline), "--set", "nodes.input.path=nowhere.csv")
    assert result.exit_code == 1
    assert "node 'input'" in result.stderr and "nowhere.csv" in result.stderr
    assert_no_traceback(result.stdout, result.stderr)


def test_a_pipeline_without_llm_nodes_costs_nothing(tmp_path: Path) -> None:
    _csv(tmp_path / "data.csv", ROWS)
    path = write(
        tmp_path / "p.yaml",
        "version: 1\nname: plain\nnodes:\n  input: {op: read_csv, path: data.csv}\n"
        "  output: {op: write_parquet, input: input, path: out}\n",
    )
    result = invoke("estimate", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["nodes"] == {} and data["total"]["expected_usd"] == 0


def test_requests_are_rendered_like_a_run(pipeline: Path) -> None:
    """The tokens counted are those of the very requests a run sends (RowTask, for the primary target)."""
    spec: LlmSpec = check_file(str(pipeline)).loaded.spec.nodes["classify"]  # type: ignore[assignment]
    requests: list[LlmRequest] = [
        RowTask(spec, {}).request(row, Target("offline", "offline")) for row in ROWS
    ]
    expected = sum(-(-len(r.prompt) // 4) for r in requests)
    assert _estimate(pipeline).nodes["classify"].input_tokens == expected


def test_rows_whose_prompt_cannot_render_are_a_located_warning(pipeline: Path) -> None:
    """Without `columns`, a CSV's columns are known only once read: the sample finds the bad name."""
    text = PIPELINE.replace("support ticket: {{ body }}", "support ticket: {{ bodyy }}")
    write(pipeline, text.replace("    columns: [id, body]\n", ""))
    result = invoke("estimate", str(pipeline), "--json")
    assert result.exit_code == 0, result.output
    first = diagnostic_lines(result.stderr)[0]
    assert (first["line"], first["severity"]) == ("12", "warning")
    assert "30 of 30 sampled rows cannot render the prompt of 'classify'" in first["message"]
    assert "'bodyy' is undefined" in first["message"]
    assert json.loads(result.stdout)["nodes"]["classify"]["calls"] == 0


@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
def test_count_tokens_api_asks_the_gemini_endpoint(pipeline: Path) -> None:
    gemini = ("--set", "defaults.provider=gemini", "--set", "defaults.model=gemini-2.5-flash")
    with LLMServer() as server:
        config = (
            "--set",
            f"providers.gemini.config={{base_url: '{server.url}', api_key: '${{HEADRACE_TEST_KEY}}'}}",
        )
        result = invoke("estimate", str(pipeline), *gemini, *config, "--count-tokens", "api", "--json")
        assert result.exit_code == 0, result.output
        assert [r.endpoint for r in server.requests] == ["countTokens"] * 60
    classify = json.loads(result.stdout)["nodes"]["classify"]
    assert classify["input_tokens_method"].startswith("api: gemini")
    local = _estimate(pipeline, *gemini[:2], *gemini[2:]).nodes["classify"].input_tokens
    assert classify["input_tokens"] == pytest.approx(local, rel=0.2)


def test_a_filter_on_an_llm_answer_keeps_each_labels_even_share_and_says_it_is_a_guess(
    pipeline: Path,
) -> None:
    text = PIPELINE.replace("    input: classify\n", "    input: bugs\n")
    text = text.replace(
        "  extract:\n", "  bugs: {op: filter, input: classify, where: \"label = 'bug'\"}\n  extract:\n"
    )
    write(pipeline, text)
    node = _estimate(pipeline).nodes["extract"]
    assert (node.rows, node.rows_basis) == (10, "estimated")  # one label in three
    assert any("stand-in answers of 'classify'" in note for note in node.notes)


def test_public_names_are_pinned() -> None:
    import engine.estimate

    assert sorted(engine.estimate.__all__) == [
        "Estimate",
        "EstimateOptions",
        "NodeEstimate",
        "SourceEstimate",
        "estimate_checked",
    ]
