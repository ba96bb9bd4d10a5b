"""`--set KEY=VALUE`: typed values, new keys, list indices, and no leaks through YAML aliases."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.spec.document import read_document
from engine.spec.loader import load_pipeline
from engine.spec.models import Pipeline
from engine.spec.overrides import apply_overrides, parse_override
from tests.unit.helpers import VALID_PIPELINE, diagnostic_lines, invoke, write

LLM_PIPELINE = """\
version: 1
name: triage
nodes:
  input: {op: read_csv, path: tickets.csv}
  classify:
    op: llm_classify
    input: input
    prompt: "Ticket: {{ body }}"
    labels: [bug, billing, other]
  output: {op: write_parquet, input: classify, path: out}
"""


def _load(text: str, *overrides: str) -> Pipeline:
    return load_pipeline("p.yaml", content=text, overrides=overrides, env={}).spec


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("a.b=3", ("a", "b"), 3),
        ("a=-2", ("a",), -2),
        ("a=1.5", ("a",), 1.5),
        ("a=true", ("a",), True),
        ("a=null", ("a",), None),
        ("a=hello world", ("a",), "hello world"),
        ("a='3'", ("a",), "3"),
        ('a="yes"', ("a",), "yes"),
        ("a=yes", ("a",), "yes"),
        ("a=2024-01-01", ("a",), "2024-01-01"),
        ("a=", ("a",), ""),
        ("a=x=y", ("a",), "x=y"),
        ("a=[x, y]", ("a",), ["x", "y"]),
        ("a=[1, 2]", ("a",), [1, 2]),
        ("a={k: v}", ("a",), {"k": "v"}),
        ("nodes.x.labels.0=bug", ("nodes", "x", "labels", 0), "bug"),
    ],
)
def test_parse_override(text: str, key: tuple[str | int, ...], value: object) -> None:
    assert parse_override(text) == (key, value)
    assert type(parse_override(text)[1]) is type(value)


def test_set_an_int() -> None:
    spec = _load(VALID_PIPELINE, "nodes.input.batch_rows=500")
    assert spec.nodes["input"].batch_rows == 500


def test_set_a_string_replacing_one() -> None:
    spec = _load(VALID_PIPELINE, "nodes.input.path=s3://bucket/in/*.csv", "name=renamed")
    assert spec.nodes["input"].path == "s3://bucket/in/*.csv"
    assert spec.name == "renamed"


def test_quoting_keeps_a_number_a_string() -> None:
    assert _load(VALID_PIPELINE, "name='2024'").name == "2024"


def test_set_a_list() -> None:
    spec = _load(LLM_PIPELINE, "nodes.classify.labels=[spam, ham]")
    assert spec.nodes["classify"].labels == ["spam", "ham"]


def test_set_a_list_item_and_append_one() -> None:
    spec = _load(LLM_PIPELINE, "nodes.classify.labels.1=invoice", "nodes.classify.labels.3=praise")
    assert spec.nodes["classify"].labels == ["bug", "invoice", "other", "praise"]


def test_set_new_keys_creates_the_mappings() -> None:
    spec = _load(
        VALID_PIPELINE, "nodes.output.resources.num_cpus=2", "budget.max_cost_usd=1.25", "labels.team=risk"
    )
    assert spec.nodes["output"].resources.num_cpus == 2
    assert spec.budget.max_cost_usd == 1.25
    assert spec.labels == {"team": "risk"}


def test_set_a_whole_new_node() -> None:
    spec = _load(
        VALID_PIPELINE,
        "nodes.clean={op: filter, input: input, where: 'id > 0'}",
        "nodes.output.input=clean",
    )
    assert spec.nodes["clean"].where == "id > 0"
    assert spec.nodes["output"].input == "clean"


def test_later_overrides_win() -> None:
    assert _load(VALID_PIPELINE, "name=first", "name=second").name == "second"


def test_overrides_do_not_leak_through_a_shared_anchor() -> None:
    text = (
        VALID_PIPELINE.replace(
            "    path: data.csv\n", "    path: data.csv\n    resources: &small {num_cpus: 1, memory: 1GiB}\n"
        )
        + "    resources: *small\n"
    )
    doc = read_document("p.yaml", text)
    shared = doc.data["nodes"]["input"]["resources"]
    assert shared is doc.data["nodes"]["output"]["resources"], "the alias should share one container"
    spec = _load(text, "nodes.input.resources.num_cpus=4")
    assert spec.nodes["input"].resources.num_cpus == 4
    assert spec.nodes["output"].resources.num_cpus == 1
    assert spec.nodes["output"].resources.memory == 1024**3


def test_overrides_do_not_leak_into_a_shared_list() -> None:
    text = (
        "version: 1\nname: x\n"
        "nodes:\n"
        "  input: {op: read_csv, path: [a.csv, b.csv], null_values: &nulls ['', NA]}\n"
        "  other: {op: read_csv, path: c.csv, null_values: *nulls}\n"
        "  out: {op: write_parquet, input: input, path: o}\n"
        "  out2: {op: write_parquet, input: other, path: o2}\n"
    )
    spec = _load(text, "nodes.other.null_values.1=n/a")
    assert spec.nodes["other"].null_values == ["", "n/a"]
    assert spec.nodes["input"].null_values == ["", "NA"]


def test_apply_overrides_leaves_the_document_untouched() -> None:
    doc = read_document("p.yaml", LLM_PIPELINE)
    before = copy.deepcopy(doc.data)
    after = apply_overrides(doc, ["nodes.classify.labels.0=x", "nodes.input.path=y", "extra.key=1"])
    assert doc.data == before
    assert doc.source_map.origins == {}
    assert after.data["nodes"]["classify"]["labels"][0] == "x"
    assert after.source_map.origin(("nodes", "classify", "labels", 0)) == "--set nodes.classify.labels.0=x"


@pytest.mark.parametrize(
    ("override", "line", "col", "words"),
    [
        ("nodes.input.path.x=1", 4, 31, "cannot set 'x' inside a str"),
        ("nodes.classify.labels.9=x", 9, 13, "'9' is not an index of the list (length 3)"),
        ("nodes.classify.labels.key=x", 9, 13, "'key' is not an index of the list"),
        ("nodes.classify.max_tokens=lots", 6, 5, "expected a whole number, got 'lots'"),
        ("version=2", 1, 10, "format v2"),
    ],
)
def test_a_bad_override_is_located_and_named(
    tmp_path: Path, override: str, line: int, col: int, words: str
) -> None:
    path = write(tmp_path / "p.yaml", LLM_PIPELINE)
    result = invoke("validate", str(path), "--set", override)
    assert result.exit_code == 1
    (found,) = [m for m in diagnostic_lines(result.stdout) if m["severity"] == "error"]
    assert (int(found["line"]), int(found["col"])) == (line, col), found.group(0)
    assert words in found["message"]
    assert f"--set {override}" in found["message"]


@pytest.mark.parametrize("override", ["novalue", "=3", "a..b=1", ".a=1", "a.=1", "a=[1, 2"])
def test_a_malformed_override_is_refused(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline("p.yaml", content=VALID_PIPELINE, overrides=[override], env={})
    (diag,) = info.value.diagnostics
    assert override in diag.message
    assert diag.code == "bad_override"
