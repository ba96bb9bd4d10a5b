"""flat_map, explode, sample and chunk_text in fused pipelines on a real local Ray."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.runtime import run_checked

pytestmark = pytest.mark.usefixtures("ray_cluster")


def run_pipeline(tmp_path: Path, text: str, *overrides: str) -> Any:
    path = tmp_path / "pipe.yaml"
    path.write_text(text, encoding="utf-8")
    return run_checked(check_file(str(path), overrides=overrides), progress=False)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_flat_map_turns_each_row_into_the_rows_its_function_returns(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": i, "text": " ".join(f"w{j}" * (j % 3 + 1) for j in range(i % 5))} for i in range(40)
    ]
    rows[3]["text"] = None
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: words
nodes:
  input: {{op: read_jsonl, path: {src}, batch_rows: 6}}
  words: {{op: flat_map, input: input, fn: "tests.integration.udfs_more:split_words", kwargs: {{min_len: 4}}}}
  output: {{op: write_parquet, input: words, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "succeeded", summary.error
    want = []
    for r in rows:
        words = [w for w in (r["text"] or "").split(" ") if len(w) >= 4]
        want += [{"id": r["id"], "word": w, "position": i} for i, w in enumerate(words)]
    got = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(got, key=lambda r: (r["id"], r["position"])) == want
    assert summary.nodes["input"].rows == 40 and summary.nodes["words"].rows == len(want)


def test_flat_map_rows_with_different_keys_fill_nulls(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i} for i in range(4)])
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: ragged
nodes:
  input: {{op: read_jsonl, path: {src}}}
  rows: {{op: flat_map, input: input, fn: "tests.integration.udfs_more:ragged"}}
  output: {{op: write_parquet, input: rows, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["id", "even", "extra"]
    assert table.to_pylist() == [
        {"id": 0, "even": True, "extra": None},
        {"id": 1, "even": None, "extra": None},
        {"id": 1, "even": None, "extra": "odd"},
        {"id": 2, "even": True, "extra": None},
        {"id": 3, "even": None, "extra": None},
        {"id": 3, "even": None, "extra": "odd"},
    ]


def test_flat_map_returning_a_dict_fails_naming_node_and_function(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}])
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: wrong
nodes:
  input: {{op: read_jsonl, path: {src}}}
  rows: {{op: flat_map, input: input, fn: "tests.integration.udfs_more:not_a_list"}}
  output: {{op: write_parquet, input: rows, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "failed"
    error = summary.error or ""
    assert "node 'rows'" in error and "in.jsonl" in error
    assert "tests.integration.udfs_more:not_a_list returned dict" in error and "list of rows" in error


def test_flat_map_rows_that_raise_are_skipped_under_an_error_policy(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"a{i} b{i}"} for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: skip
nodes:
  input: {{op: read_jsonl, path: {src}, batch_rows: 8}}
  words:
    op: flat_map
    input: input
    fn: "tests.integration.udfs_more:words_or_fail"
    on_error: {{mode: skip}}
  output: {{op: write_parquet, input: words, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "succeeded", summary.error
    ids = sorted(pq.read_table(tmp_path / "out")["id"].to_pylist())
    assert ids == sorted([i for i in range(30) if i != 13] * 2)
    assert summary.nodes["words"].failed == 1


def test_explode_gives_each_list_element_a_row_and_drops_empty_and_null_lists(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": i, "tags": [f"t{i}-{j}" for j in range(i % 4)], "note": f"n{i}"} for i in range(30)
    ]
    rows[5]["tags"] = None
    rows[6]["tags"] = ["only", None]  # a null element is still an element
    # a batch whose lists are all null or empty comes out of JSON inference with a null-typed column
    rows[8]["tags"], rows[9]["tags"] = None, None
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: explode
nodes:
  input: {{op: read_jsonl, path: {src}, batch_rows: 4}}
  tags: {{op: explode, input: input, column: tags}}
  output: {{op: write_parquet, input: tags, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "succeeded", summary.error
    want = [{"id": r["id"], "tags": t, "note": r["note"]} for r in rows for t in (r["tags"] or [])]
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["id", "tags", "note"]
    assert str(table.schema.field("tags").type) == "string"
    got = table.to_pylist()
    assert sorted(got, key=lambda r: (r["id"], str(r["tags"]))) == sorted(
        want, key=lambda r: (r["id"], str(r["tags"]))
    )
    assert summary.nodes["tags"].rows == len(want)


def _sample_ids(tmp_path: Path, src: Path, name: str, *overrides: str) -> list[int]:
    out = tmp_path / name
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: sample
nodes:
  input: {{op: read_csv, path: {src}, column_types: {{id: int64, text: string, score: double}}}}
  kept: {{op: sample, input: input, fraction: 0.3}}
  output: {{op: write_parquet, input: kept, path: {out}}}
""",
        *overrides,
    )
    assert summary.status == "succeeded", summary.error
    return sorted(pq.read_table(out)["id"].to_pylist())


def test_sample_keeps_the_same_rows_whatever_the_batch_size_or_split_layout(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = [f'{i},"text {rng.random():.6f}, {i}",{rng.uniform(-5, 5):.3f}\n' for i in range(10_000)]
    src = tmp_path / "in.csv"
    src.write_text("id,text,score\n" + "".join(lines), encoding="utf-8")
    one_batch = _sample_ids(tmp_path, src, "a", "nodes.input.batch_rows=100000")
    many = _sample_ids(tmp_path, src, "b", "nodes.input.batch_rows=97", "nodes.input.split_bytes=40000")
    assert len(list((tmp_path / "b").glob("part-*.parquet"))) > 3  # really split differently
    assert one_batch == many
    assert abs(len(one_batch) / 10_000 - 0.3) < 0.03
    other_seed = _sample_ids(tmp_path, src, "c", "nodes.kept.seed=1")
    assert abs(len(other_seed) / 10_000 - 0.3) < 0.03
    assert other_seed != one_batch


def _documents(rng: random.Random, count: int) -> list[str]:
    words = ["a", "bb", "ccc", "dddd", "Grüße", "中文", "✓", "eeeeeeeeeeeeeeeeeeeeeeeeeeeee"]
    seps = [" ", " ", " ", "\n", "  ", "\t"]
    docs = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(0, 400)):
            parts += [rng.choice(words), rng.choice(seps)]
        docs.append("".join(parts))
    return docs


def test_chunk_text_chunks_rebuild_each_document_exactly(tmp_path: Path) -> None:
    docs = _documents(random.Random(11), 12)
    docs[4] = ""  # an empty document gives no chunks
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(docs):
        (folder / f"d{i:02d}.txt").write_bytes(text.encode("utf-8"))
    summary = run_pipeline(
        tmp_path,
        f"""
version: 1
name: chunks
nodes:
  input: {{op: read_text, path: {folder}, mode: file, batch_rows: 5}}
  chunks: {{op: chunk_text, input: input, column: text, chunk_chars: 120, overlap_chars: 30}}
  pick: {{op: select, input: chunks, columns: [path, chunk_index, chunk]}}
  output: {{op: write_parquet, input: pick, path: {tmp_path}/out}}
""",
    )
    assert summary.status == "succeeded", summary.error
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["path", "chunk_index", "chunk"]
    by_doc: dict[str, list[tuple[int, str]]] = {}
    for row in table.to_pylist():
        by_doc.setdefault(Path(row["path"]).name, []).append((row["chunk_index"], row["chunk"]))
    for i, text in enumerate(docs):
        chunks = [c for _, c in sorted(by_doc.get(f"d{i:02d}.txt", []))]
        assert [n for n, _ in sorted(by_doc.get(f"d{i:02d}.txt", []))] == list(range(len(chunks)))
        assert all(0 < len(c) <= 120 for c in chunks)
        assert "".join(c if n == 0 else c[30:] for n, c in enumerate(chunks)) == text
    assert "d04.txt" not in by_doc
    assert summary.nodes["chunks"].rows == table.num_rows
