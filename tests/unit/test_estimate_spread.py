"""`headrace estimate` samples spread over the whole input: where the rows come from, the row count's
range, the cost's range, accuracy on each shape of input against the bill computed directly, and what
an estimate of a 10 GB file reads. No Ray."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.estimate_bill import bill, read_all
from benchmarks.estimate_shapes import SHAPES, pipeline_yaml
from engine.check import check_file
from engine.estimate import Estimate, EstimateOptions, estimate_checked
from engine.estimate.intervals import grouped_se, p5_p95, strata_se
from tests.unit.helpers import ROOT, invoke, write

ROWS = 3_000


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_BENCH_KEY", "test-key")


def _shape(tmp_path: Path, name: str, rows: int = ROWS) -> tuple[Path, Path]:
    """The shape's input and its pipeline (never run: no server behind its URL)."""
    shape = SHAPES[name]
    data = shape.write(tmp_path, rows)
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline_yaml(shape, data, tmp_path / "out", "http://127.0.0.1:9"))
    return data, path


def _estimate(path: Path, **options: Any) -> Estimate:
    return estimate_checked(check_file(str(path)), EstimateOptions(**options))


def _records(rows: list[list[str]], header: list[str]) -> tuple[bytes, list[int]]:
    """A CSV of ``rows`` and the byte offset where each record starts."""
    out, starts = io.BytesIO(), []
    for i, row in enumerate([header, *rows]):
        if i:
            starts.append(out.tell())
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(row)
        out.write(text.getvalue().encode("utf-8"))
    return out.getvalue(), starts


# --- where the sample comes from ---------------------------------------------------------------------


def test_the_sample_is_read_from_ranges_spread_evenly_over_the_file_the_same_every_time(
    tmp_path: Path,
) -> None:
    data, path = _shape(tmp_path, "growing")
    first, again = _estimate(path).sources["input"], _estimate(path).sources["input"]
    assert first.sample_ranges == again.sample_ranges  # deterministic
    size = data.stat().st_size
    ranges = first.sample_ranges
    assert len(ranges) == 32 and first.basis == "estimated"
    header = len(data.read_bytes().split(b"\n", 1)[0]) + 1
    for i, r in enumerate(ranges):  # one range inside each 32nd of the data, in order
        lo = header + (size - header) * i // 32
        hi = header + (size - header) * (i + 1) // 32
        assert lo <= r.start < r.end <= hi, (i, r)
    assert ranges[-1].start > size * 0.9  # the end of the file is read, not only its start
    assert sum(r.rows for r in ranges) == first.sampled_rows >= 400
    assert first.bytes_read < size / 2


def test_csv_ranges_start_with_the_quote_state_of_their_offset(tmp_path: Path) -> None:
    """Quoted fields hold newlines, commas and quotes: a range starting inside one must not take the
    lines after its start for records. Every range's rows are exactly the records starting in it."""
    texts = [
        f'ticket {i}: "{"line, " * (i % 7)}"\n' + "\n".join(["more text"] * (1 + i % 9)) for i in range(4000)
    ]
    raw, starts = _records([[str(i), t] for i, t in enumerate(texts)], ["id", "text"])
    data = write(tmp_path / "quoted.csv", raw)
    path = write(
        tmp_path / "p.yaml",
        "version: 1\nname: q\nnodes:\n"
        f"  input: {{op: read_csv, path: {data}, column_types: {{id: int64, text: string}}}}\n"
        "  classify: {op: llm_classify, input: input, provider: offline, prompt: '{{ text }}',"
        " labels: [a, b]}\n"
        "  output: {op: write_parquet, input: classify, path: out}\n",
    )
    source = _estimate(path).sources["input"]
    assert source.malformed_rows == 0 and source.basis == "estimated"
    inside = 0
    for r in source.sample_ranges:
        owned = [s for s in starts if r.start <= s < r.end]
        assert r.rows == len(owned), r
        before = raw[: r.start]
        inside += before.count(b'"') % 2 == 1  # an odd count of quotes before it: inside a field
    assert inside >= 3  # several ranges did start inside a quoted field
    assert source.rows_p5 <= len(texts) <= source.rows_p95


def test_a_folder_is_sampled_in_every_file_in_proportion_to_its_bytes(tmp_path: Path) -> None:
    data, path = _shape(tmp_path, "folder")
    source = _estimate(path).sources["input"]
    files = sorted(data.iterdir())
    touched = {Path(r.url).name for r in source.sample_ranges}
    assert touched == {f.name for f in files}
    big = max(files, key=lambda f: f.stat().st_size)
    assert sum(1 for r in source.sample_ranges if Path(r.url) == big) > 1
    assert source.rows == pytest.approx(len(read_all(SHAPES["folder"], data)), rel=0.05)


def test_parquet_counts_stay_exact_and_the_sample_spans_its_row_groups(tmp_path: Path) -> None:
    table = pa.table(
        {"id": list(range(10_000)), "text": [f"ticket {i} " + "x" * (i // 50) for i in range(10_000)]}
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=500)
    path = write(
        tmp_path / "p.yaml",
        "version: 1\nname: q\nnodes:\n"
        f"  input: {{op: read_parquet, path: {tmp_path / 't.parquet'}}}\n"
        "  classify: {op: llm_classify, input: input, provider: offline, prompt: '{{ text }}',"
        " labels: [a, b]}\n"
        "  output: {op: write_parquet, input: classify, path: out}\n",
    )
    result = _estimate(path)
    source = result.sources["input"]
    assert (source.rows, source.basis, source.rows_p5, source.rows_p95) == (10_000, "exact", 10_000, 10_000)
    groups = [r.row_group for r in source.sample_ranges]
    assert groups == list(range(20))  # 32 places over 20 row groups: every one of them
    offline = [-(-len(f"{row['text']}") // 4) for row in table.to_pylist()]
    assert result.nodes["classify"].input_tokens == pytest.approx(sum(offline), rel=0.05)


# --- the row count and its range --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "growing", "shrinking", "jsonl_nested", "folder"])
def test_the_row_count_comes_from_the_spread_sample_with_a_range_holding_the_truth(
    tmp_path: Path, name: str
) -> None:
    data, path = _shape(tmp_path, name)
    source = _estimate(path).sources["input"]
    true = len(read_all(SHAPES[name], data))
    assert source.basis == "estimated"
    assert source.rows == pytest.approx(true, rel=0.06)
    assert source.rows_p5 < source.rows < source.rows_p95
    # p5-p95 is a 90% range (one shape in ten may fall outside it by chance): the error stays within
    # three of its standard errors
    se = (source.rows_p95 - source.rows_p5) / (2 * 1.645)
    assert abs(source.rows - true) <= 3 * se


def test_a_sample_that_reaches_every_byte_is_exact_with_no_range(tmp_path: Path) -> None:
    _, path = _shape(tmp_path, "growing", rows=40)
    result = _estimate(path)
    source = result.sources["input"]
    assert (source.rows, source.basis, source.rows_p5, source.rows_p95) == (40, "exact", 40, 40)
    node = result.nodes["classify"]
    assert node.usd_p5 == node.expected_usd == node.usd_p95 > 0


def test_the_interval_formulas() -> None:
    assert strata_se([5.0]) is None
    assert strata_se([3.0, 3.0, 3.0]) == 0.0
    # successive differences: k / (2 (k - 1)) * sum of squares = 4/6 * (1 + 1 + 1)
    assert strata_se([1.0, 2.0, 1.0, 2.0]) == pytest.approx((4 / 6 * 3) ** 0.5)
    # files differ from each other for good: only neighbours within a file count
    assert grouped_se([1.0, 1.0, 9.0, 9.0], [0, 0, 1, 1]) == 0.0
    low, high = p5_p95(100.0, 10.0)
    assert (low, high) == pytest.approx((100 - 16.4485, 100 + 16.4485), abs=1e-3)
    assert p5_p95(5.0, 10.0)[0] == 0.0  # never below zero


# --- cost: each shape against the bill computed directly ------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_shape_estimates_the_bill_within_its_range(tmp_path: Path, name: str) -> None:
    """The bill: every row read, filtered and rendered as a run renders it, billed by the loopback
    server's own rules (four characters a token, the tool-use system prompt, the tool call's JSON)."""
    data, path = _shape(tmp_path, name)
    result = _estimate(path)
    node = result.nodes["classify"]
    actual = bill(check_file(str(path)).loaded.spec.nodes["classify"], read_all(SHAPES[name], data))
    assert node.expected_usd == pytest.approx(actual["usd"], rel=0.10)
    assert node.usd_p5 <= actual["usd"] <= node.usd_p95
    assert node.calls == pytest.approx(actual["calls"], rel=0.10)
    assert (node.rows_basis, node.sample_ranges) == ("estimated", 32)
    total = result.total
    assert (total["usd_p5"], total["usd_p95"]) == pytest.approx((node.usd_p5, node.usd_p95))


def test_the_issues_example_is_no_longer_several_times_the_bill(tmp_path: Path) -> None:
    """6,000 rows growing 5 -> 300 words, a third of the second half filtered out: the first rows
    (the shortest, all kept) made the estimate 3.4x the bill."""
    data, path = _shape(tmp_path, "issue_example", rows=6_000)
    node = _estimate(path).nodes["classify"]
    actual = bill(
        check_file(str(path)).loaded.spec.nodes["classify"], read_all(SHAPES["issue_example"], data)
    )
    assert actual["calls"] == 5_000
    assert 0.9 <= node.expected_usd / actual["usd"] <= 1.1
    assert node.calls == pytest.approx(5_000, rel=0.1)
    assert node.usd_p5 <= actual["usd"] <= node.usd_p95 < node.worst_case_usd


def test_json_and_text_say_how_the_figures_were_found(tmp_path: Path) -> None:
    _, path = _shape(tmp_path, "issue_example")
    result = invoke("estimate", str(path), "--json", "--ranges", "8", "--sample", "200")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    node = data["nodes"]["classify"]
    assert node["rows_basis"] == "estimated" and node["sample_ranges"] == 8 and node["sampled_rows"] > 0
    assert node["usd_p5"] < node["expected_usd"] < node["usd_p95"] <= node["worst_case_usd"]
    source = data["method"]["sources"]["input"]
    assert len(source["sample_ranges"]) == 8 and source["rows_p5"] < source["rows"] < source["rows_p95"]
    assert {"url", "start", "end", "rows"} <= set(source["sample_ranges"][0])
    assert data["total"]["usd_p5"] == pytest.approx(node["usd_p5"])
    text = invoke("estimate", str(path)).stdout
    assert "p5-p95 $" in text and "from 32 places spread over it" in text
    assert "sampled rows from 32 ranges of 'input' reach it; rows estimated" in text


# --- what an estimate costs ---------------------------------------------------------------------------

_BIG = """
import json, sys, time
import fsspec
from benchmarks.estimate_shapes import SHAPES, GeneratedCsv, pipeline_yaml
from engine.check import check_file
from engine.estimate import estimate_checked
fsspec.register_implementation("generated", GeneratedCsv, clobber=True)
out = []
for size in map(int, sys.argv[1:]):
    url = f"generated://{size}.csv"
    path = f"{sys.argv[0]}-{size}.yaml"
    open(path, "w").write(pipeline_yaml(SHAPES["growing"], url, "out", "http://127.0.0.1:9"))
    GeneratedCsv.bytes_read = 0
    began = time.perf_counter()
    source = estimate_checked(check_file(path)).sources["input"]
    out.append({"size": GeneratedCsv._size(url), "read": GeneratedCsv.bytes_read, "rows": source.rows,
                "p5": source.rows_p5, "p95": source.rows_p95, "true": GeneratedCsv.rows(url),
                "seconds": time.perf_counter() - began})
print(json.dumps({"ray": "ray" in sys.modules, "runs": out}))
"""


def test_a_10_gb_file_is_estimated_from_a_few_mb_without_ray(tmp_path: Path) -> None:
    """A CSV computed from its offsets (nothing on disk) of 100 MB and of 10 GB: the bytes read do not
    grow with the size, stay under a few MB, and no Ray module is even imported."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _BIG.replace("sys.argv[0]", repr(str(tmp_path / "big"))),
            str(10**8),
            str(10**10),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "HEADRACE_BENCH_KEY": "k",
            "HEADRACE_ALLOWED_SCHEMES": "file,generated",
            "PYTHONPATH": str(ROOT),
        },
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["ray"] is False
    small, big = report["runs"]
    assert big["size"] > 0.99 * 10**10 > small["size"] * 50
    # the windows, their look-backs and boundary searches, and the CSV reader's schema inference (the
    # first 2 MiB; handed the file itself, pyarrow's read-ahead pulled 10-20 MiB more)
    assert big["read"] <= 8 * 2**20
    assert big["read"] <= 2 * small["read"]  # independent of the size
    for run in (small, big):  # rows growing 50x in every 1 MB: a hard input for evenly spread ranges
        assert run["rows"] == pytest.approx(run["true"], rel=0.1)
        assert run["p5"] <= run["true"] <= run["p95"]


def test_the_loopback_server_can_bill_anthropics_tool_use_overhead() -> None:
    """The real SDK over HTTP: with ``tool_use_overhead`` a forced tool pays the 313-token tool-use system
    prompt (also in count_tokens) and its output is the tool call's name and input."""
    import anthropic

    from tests.loopback import LLMServer

    tool = {
        "name": "record_answer",
        "description": "Record the answer.",
        "input_schema": {
            "type": "object",
            "properties": {"value": {"type": "string", "enum": ["bug", "billing"]}},
            "required": ["value"],
        },
    }
    ask = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Classify: the app crashes"}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "record_answer"},
    }
    usage = {}
    for overhead in (False, True):
        with LLMServer(tool_use_overhead=overhead) as server:
            client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
            message = client.messages.create(**ask)  # type: ignore[call-overload]
            counted = client.messages.count_tokens(**{k: v for k, v in ask.items() if k != "max_tokens"})
            usage[overhead] = (message.usage.input_tokens, message.usage.output_tokens, counted.input_tokens)
    plain, billed = usage[False], usage[True]
    assert billed[0] == plain[0] + 313 == billed[2]
    called = json.dumps({"name": "record_answer", "input": {"value": "bug"}})
    assert billed[1] == -(-len(called) // 4) > plain[1]
