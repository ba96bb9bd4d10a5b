"""Dataflow pipelines on a real local Ray: every connector and transform, outputs, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.errors import ConfigError
from engine.runtime import run_checked
from tests.cli import run_headrace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"

pytestmark = pytest.mark.usefixtures("ray_cluster")


def run_file(path: Path | str, *overrides: str, content: str | None = None):
    checked = check_file(str(path), content=content, overrides=overrides)
    return run_checked(checked, progress=False)


def write_pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_quickstart_matches_the_same_query_in_duckdb(out_env: Path) -> None:
    summary = run_file(EXAMPLES / "quickstart.yaml")
    assert summary.status == "succeeded", summary.error
    got = pq.read_table(out_env / "quickstart").sort_by("id")
    # read_csv's default null_values [""] makes empty fields null, strings included
    source = pacsv.read_csv(
        EXAMPLES / "data" / "tickets.csv", convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
    )
    con = duckdb.connect()
    con.register("t", source)
    want = con.sql(
        "SELECT id, customer, trim(body) AS body, upper(coalesce(priority, 'low')) AS priority, "
        "length(body) AS body_chars FROM t WHERE body IS NOT NULL AND length(trim(body)) >= 5 ORDER BY id"
    ).to_arrow_table()
    assert got.column_names == [*want.column_names, "team"]
    assert got.drop_columns(["team"]).to_pylist() == want.to_pylist()
    # the offline triage step: its keyword rules first, else a deterministic pick among the labels
    teams = dict(zip(got.column("body").to_pylist(), got.column("team").to_pylist(), strict=True))
    assert teams["How do I change my password?"] == "account"
    assert all(team == "bug" for body, team in teams.items() if "crash" in body.lower())
    assert set(teams.values()) <= {"bug", "billing", "account", "feature", "other"}
    assert summary.nodes["triage"].llm is not None and summary.total_cost_usd == 0.0
    assert summary.nodes["input"].rows == source.num_rows
    assert summary.nodes["output"].rows == want.num_rows
    manifest = json.loads((out_env / "quickstart" / "_manifest.json").read_text())
    assert manifest["rows"] == want.num_rows and manifest["run_id"] == summary.run_id


def _tricky_csv(path: Path, rows: int) -> list[list[str]]:
    data = []
    for i in range(rows):
        data.append(
            [
                str(i),
                f'quote "{i}" and, comma',
                "line one\nline two" if i % 3 == 0 else "",
                "Grüße — 中文 ✓" if i % 2 else "plain",
            ]
        )
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "multi", "unicode"])
        writer.writerows(data)
    return data


def test_csv_to_parquet_is_row_exact_with_quotes_newlines_and_unicode(tmp_path: Path) -> None:
    src = tmp_path / "tricky.csv"
    data = _tricky_csv(src, 5_000)
    out = tmp_path / "parquet"
    summary = run_file(
        EXAMPLES / "csv_to_parquet.yaml",
        f"nodes.input.path={src}",
        f"nodes.output.path={out}",
        "nodes.input.column_types={id: string, text: string, multi: string, unicode: string}",
        "nodes.input.null_values=[]",
    )
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(out)
    got = sorted(table.to_pylist(), key=lambda r: int(r["id"]))
    assert [[r["id"], r["text"], r["multi"], r["unicode"]] for r in got] == data


def test_jsonl_text_and_parquet_sources_with_every_sink(tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"n": i, "s": f"r{i}"}) + "\n" for i in range(100)), encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(f"document {i}\nsecond line", encoding="utf-8")
    pq.write_table(
        pa.table({"n": list(range(50)), "s": ["x"] * 50}), tmp_path / "in.parquet", row_group_size=10
    )
    path = write_pipeline(
        tmp_path,
        f"""
version: 1
name: many
nodes:
  j: {{op: read_jsonl, path: {jsonl}}}
  j_out: {{op: write_parquet, input: j, path: {tmp_path}/j_out}}
  lines: {{op: read_text, path: {docs}}}
  lines_out: {{op: write_jsonl, input: lines, path: {tmp_path}/lines_out}}
  files: {{op: read_text, path: {docs}, mode: file}}
  files_out: {{op: write_jsonl, input: files, path: {tmp_path}/files_out}}
  pq: {{op: read_parquet, path: {tmp_path}/in.parquet, columns: [n]}}
  pq_out: {{op: write_csv, input: pq, path: {tmp_path}/pq_out}}
""",
    )
    summary = run_file(path)
    assert summary.status == "succeeded", summary.error
    assert sorted(pq.read_table(tmp_path / "j_out")["n"].to_pylist()) == list(range(100))
    lines = [
        json.loads(x)
        for f in sorted((tmp_path / "lines_out").glob("part-*"))
        for x in f.read_text().splitlines()
    ]
    assert sorted(r["text"] for r in lines) == sorted(
        [f"document {i}" for i in range(3)] + ["second line"] * 3
    )
    files = [
        json.loads(x) for f in (tmp_path / "files_out").glob("part-*") for x in f.read_text().splitlines()
    ]
    assert sorted(r["text"] for r in files) == [f"document {i}\nsecond line" for i in range(3)]
    assert all(r["path"].endswith(".txt") for r in files)
    # five row groups become five splits, each its own part
    parts = sorted((tmp_path / "pq_out").glob("part-*.csv"))
    assert len(parts) == 5
    numbers = sorted(n for p in parts for n in pacsv.read_csv(p)["n"].to_pylist())
    assert numbers == list(range(50))
    assert pacsv.read_csv(parts[0]).column_names == ["n"]


def test_every_transform(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("n,word,drop\n" + "".join(f"{i},w{i},x\n" for i in range(20)), encoding="utf-8")
    path = write_pipeline(
        tmp_path,
        f"""
version: 1
name: transforms
nodes:
  input: {{op: read_csv, path: {src}, batch_rows: 7}}
  keep: {{op: filter, input: input, where: "n % 2 = 0"}}
  pick: {{op: select, input: keep, columns: [n, word]}}
  named: {{op: rename, input: pick, columns: {{word: label}}}}
  typed: {{op: cast, input: named, columns: {{n: double}}}}
  doubled: {{op: map_batches, input: typed, fn: "tests.integration.udfs:double_n", kwargs: {{factor: 3}}}}
  shaped: {{op: sql, input: doubled, query: "SELECT n, upper(label) AS label FROM batch"}}
  output: {{op: write_parquet, input: shaped, path: {tmp_path}/out}}
""",
    )
    summary = run_file(path)
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(tmp_path / "out").sort_by("n")
    assert table.schema.field("n").type == pa.float64()
    assert table.to_pylist() == [{"n": float(i * 3), "label": f"W{i}"} for i in range(0, 20, 2)]
    assert summary.nodes["input"].rows == 20 and summary.nodes["keep"].rows == 10


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n2\n", encoding="utf-8")
    out = tmp_path / "out"
    args = (f"nodes.input.path={src}", f"nodes.output.path={out}")
    assert run_file(EXAMPLES / "csv_to_parquet.yaml", *args).status == "succeeded"
    before = sorted(p.name for p in out.iterdir())
    second = run_file(EXAMPLES / "csv_to_parquet.yaml", *args)
    assert second.status == "failed" and "overwrite: true" in (second.error or "")
    assert sorted(p.name for p in out.iterdir()) == before
    third = run_file(EXAMPLES / "csv_to_parquet.yaml", *args, "nodes.output.overwrite=true")
    assert third.status == "succeeded"
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == third.run_id


def test_a_failing_user_function_names_node_and_file_and_keeps_committed_parts(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("n\n1\n2\n", encoding="utf-8")
    (folder / "b.csv").write_text("n\n6\n7\n", encoding="utf-8")
    path = write_pipeline(
        tmp_path,
        f"""
version: 1
name: failing
nodes:
  input: {{op: read_csv, path: {folder}}}
  check: {{op: map_batches, input: input, fn: "tests.integration.udfs:explode_on_seven"}}
  output: {{op: write_parquet, input: check, path: {tmp_path}/out}}
""",
    )
    summary = run_file(path)
    assert summary.status == "failed"
    assert summary.exit_code == 3
    assert "node 'check'" in (summary.error or "") and "b.csv" in (summary.error or "")
    assert "n must not be 7" in (summary.error or "")
    # no half-written files are visible; no manifest claims a finished output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "_manifest.json" not in names
    assert all(not n.endswith(".tmp") for n in names)
    for part in (tmp_path / "out").glob("part-*.parquet"):
        assert pq.read_table(part)["n"].to_pylist() == [1, 2]


def test_a_malformed_csv_row_names_node_and_file(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    summary = run_file(
        EXAMPLES / "csv_to_parquet.yaml", f"nodes.input.path={src}", f"nodes.output.path={tmp_path}/o"
    )
    assert summary.status == "failed"
    assert "node 'input'" in (summary.error or "") and "bad.csv" in (summary.error or "")
    assert "Expected 2 columns, got 3" in (summary.error or "")


def test_missing_input_is_a_clear_failure(tmp_path: Path) -> None:
    summary = run_file(
        EXAMPLES / "csv_to_parquet.yaml",
        f"nodes.input.path={tmp_path}/nope.csv",
        f"nodes.output.path={tmp_path}/o",
    )
    assert summary.status == "failed"
    assert "no such file or folder" in (summary.error or "") and "nope.csv" in (summary.error or "")


def test_requests_beyond_the_cluster_are_refused_at_their_line(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        """version: 1
name: greedy
nodes:
  input: {op: read_csv, path: x.csv}
  output:
    op: write_parquet
    input: input
    path: out
    resources: {num_cpus: 64}
""",
    )
    with pytest.raises(ConfigError) as err:
        run_file(path)
    (diag,) = err.value.diagnostics
    assert (diag.line, diag.col) == (9, 27)
    assert "node 'output' needs, per task, 64 CPU; no node has 64 CPU" in diag.message
    assert "1 node: {2 CPU" in diag.message  # what the nodes have, node by node


def test_an_llm_node_without_provider_or_price_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        """version: 1
name: later
nodes:
  input: {op: read_csv, path: x.csv}
  first: {op: llm_map, input: input, prompt: "Summarise {{ text }}"}
  output: {op: write_parquet, input: first, path: out}
""",
    )
    with pytest.raises(ConfigError) as err:
        run_file(path)
    (diag,) = err.value.diagnostics
    assert (diag.line, diag.col) == (5, 15)
    assert "LLM node 'first' has no provider" in diag.message and "offline" in (diag.hint or "")
    # a model without a price is refused before anything is spent, at the node's provider
    priced = path.read_text().replace(
        'prompt: "Summarise', 'provider: anthropic, model: claude-9, prompt: "Summarise'
    )
    path.write_text(priced)
    with pytest.raises(ConfigError) as err:
        run_file(path)
    (diag,) = [d for d in err.value.diagnostics if "price" in d.message or "claude-9" in d.message]
    assert diag.line == 5 and "claude-9" in diag.message and "prices" in (diag.hint or "")


def test_cli_run_json_starts_its_own_ray(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,x\n2,y\n", encoding="utf-8")
    out = tmp_path / "o"
    proc = run_headrace(
        "run",
        EXAMPLES / "csv_to_parquet.yaml",
        "--set",
        f"nodes.input.path={src}",
        "--set",
        f"nodes.output.path={out}",
        "--json",
        cwd=tmp_path,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    assert result["nodes"]["input"]["rows"] == 2 and result["nodes"]["output"]["rows"] == 2
    assert result["outputs"]["output"].endswith("_manifest.json")
    assert set(result) >= {"run_id", "status", "nodes", "total_cost_usd", "outputs"}
    assert pq.read_table(out).num_rows == 2


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("n\n1\n", encoding="utf-8")
    path = write_pipeline(
        tmp_path,
        f"""version: 1
name: clobber
nodes:
  input: {{op: read_csv, path: {folder}}}
  inside: {{op: write_parquet, input: input, path: {folder}/out}}
  twin: {{op: write_csv, input: input, path: {folder}/out}}
""",
    )
    with pytest.raises(ConfigError) as err:
        run_file(path)
    messages = [(d.line, d.message) for d in err.value.diagnostics]
    assert any(line == 5 and "would write into the input of 'input'" in m for line, m in messages)
    assert any(line == 6 and "write to the same folder" in m for line, m in messages)
    assert (folder / "a.csv").read_text() == "n\n1\n" and not (folder / "out").exists()


def _flaky(tmp_path: Path, always: bool) -> tuple[object, Path]:
    src = tmp_path / "in.csv"
    src.write_text("n\n" + "".join(f"{i}\n" for i in range(300)), encoding="utf-8")
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    path = write_pipeline(
        tmp_path,
        f"""version: 1
name: flaky
defaults:
  retry: {{max_attempts: 3, initial_backoff_s: 0.05, max_backoff_s: 0.2}}
nodes:
  input: {{op: read_csv, path: "file://{src}", split_bytes: 256}}
  io:
    op: map_batches
    input: input
    fn: tests.integration.udfs:flaky_io
    kwargs: {{marker_dir: "{markers}", always: {str(always).lower()}}}
  output: {{op: write_parquet, input: io, path: "file://{out}"}}
""",
    )
    return run_file(path), out


def test_transient_io_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    summary, out = _flaky(tmp_path, always=False)
    assert summary.status == "succeeded", summary.error
    assert summary.retries == len(list(out.glob("part-*.parquet"))) > 1
    assert sorted(pq.read_table(out)["n"].to_pylist()) == list(range(300))


def test_persistent_io_errors_fail_after_the_configured_attempts(tmp_path: Path) -> None:
    summary, _ = _flaky(tmp_path, always=True)
    assert summary.status == "failed"
    assert "simulated I/O hiccup" in (summary.error or "") and "after 3 attempts" in (summary.error or "")


def test_memory_urls_are_refused_because_workers_cannot_see_them(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        """version: 1
name: memory
nodes:
  input: {op: read_csv, path: "memory://bucket/in.csv"}
  output: {op: write_parquet, input: input, path: out}
""",
    )
    with pytest.raises(ConfigError) as err:
        run_file(path)
    # compilation reports every problem at once: the policy refuses the scheme too
    (diag,) = [d for d in err.value.diagnostics if "filesystem lives" in d.message]
    assert diag.line == 4 and "memory:// filesystem lives in one process" in diag.message


# The llm_* examples call Claude or Gemini: tests/integration/test_llm.py runs them against the
# loopback server through the `headrace` command, with the SDKs' own environment variables.
@pytest.mark.parametrize(
    "example",
    sorted(p for p in EXAMPLES.glob("*.yaml") if not p.stem.startswith("llm_")),
    ids=lambda p: p.stem,
)
def test_every_example_runs(example: Path, out_env: Path) -> None:
    summary = run_file(example)
    assert summary.status == "succeeded", summary.error
    assert summary.outputs and all(Path(url).exists() for url in summary.outputs.values())


def test_a_type_that_changes_after_the_inferred_start_says_how_to_fix_it(tmp_path: Path) -> None:
    src = tmp_path / "drift.csv"
    src.write_text("n\n" + "1\n" * 1_000_000 + "not a number\n", encoding="utf-8")  # past the first MiB
    summary = run_file(
        EXAMPLES / "csv_to_parquet.yaml", f"nodes.input.path={src}", f"nodes.output.path={tmp_path}/o"
    )
    assert summary.status == "failed"
    error = summary.error or ""
    assert "node 'input'" in error and "drift.csv" in error and "column_types" in error
    fixed = run_file(
        EXAMPLES / "csv_to_parquet.yaml",
        f"nodes.input.path={src}",
        f"nodes.output.path={tmp_path}/o2",
        "nodes.input.column_types={n: string}",
    )
    assert fixed.status == "succeeded" and fixed.nodes["output"].rows == 1_000_001


def test_cli_run_failure_exits_3_and_names_the_problem(tmp_path: Path) -> None:
    proc = run_headrace(
        "run",
        EXAMPLES / "csv_to_parquet.yaml",
        "--set",
        f"nodes.input.path={tmp_path}/missing.csv",
        "--set",
        f"nodes.output.path={tmp_path}/o",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and "missing.csv" in result["error"]
    assert "Traceback" not in proc.stderr
