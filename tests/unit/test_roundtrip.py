"""`headrace convert` and the YAML/JSON writers: data survives every trip exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from connectors import ReadCsv, WriteParquet
from engine.spec.convert import convert, dump_json, dump_yaml
from engine.spec.document import read_document
from engine.spec.loader import load_pipeline
from engine.spec.models import Budget, Defaults, ErrorPolicy, Pipeline, Resources, RetryPolicy
from engine.spec.registry import pipeline_model
from operators import Filter, Limit, Select, Sql
from tests.unit.helpers import CONFIG_FILES, CONFIGS, invoke, write

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PIPELINES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Whole pipelines take ~0.7 s each to draw: 40 keep the suite's budget (120 took 85 s)."""


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (``True == 1`` and ``1 == 1.0`` do not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


# --- the bundled configs through the CLI ------------------------------------------------------------

CONFIG_IDS = [str(p.relative_to(CONFIGS)) for p in CONFIG_FILES]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=CONFIG_IDS)
def test_yaml_to_json_to_yaml_keeps_the_data(tmp_path: Path, path: Path) -> None:
    original = read_document(str(path)).data
    as_json = tmp_path / "p.json"
    result = invoke("convert", str(path), "--to", "json", "-o", str(as_json))
    assert result.exit_code == 0, result.output
    assert _same(json.loads(as_json.read_text(encoding="utf-8")), original)
    back = invoke("convert", str(as_json), "--to", "yaml")
    assert back.exit_code == 0, back.output
    assert _same(read_document("back.yaml", back.stdout).data, original)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=CONFIG_IDS)
def test_yaml_to_yaml_keeps_comments_and_key_order(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    result = invoke("convert", str(path), "--to", "yaml")
    assert result.exit_code == 0, result.output
    out = result.stdout
    comments = [line[line.index("#") :].strip() for line in text.splitlines() if "# " in line]
    for comment in comments:
        assert comment in out
    original, again = read_document("a.yaml", text).data, read_document("b.yaml", out).data
    assert _same(again, original)
    assert list(again) == list(original)
    assert list(again["nodes"]) == list(original["nodes"])
    for name, node in original["nodes"].items():
        assert list(again["nodes"][name]) == list(node)


def test_yaml_to_yaml_keeps_a_written_comment_at_its_place(tmp_path: Path) -> None:
    text = (
        "# header comment\n"
        "version: 1\n"
        "name: demo   # the name\n"
        "nodes:\n"
        "  # the source\n"
        "  input: {op: read_csv, path: data.csv}\n"
        "  output: {op: write_parquet, input: input, path: out}  # the sink\n"
    )
    path = write(tmp_path / "c.yaml", text)
    result = invoke("convert", str(path), "--to", "yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout == text


TRICKY_YAML = {
    "scalar-forms": (
        "a: 0o17\nb: 1_000\nc: 0777\nd: 2024-01-01\ne: ~\nf: 0x1F\ng: +12\nh: 1.\ni: .5e3\nj: -0\n"
        "k: !!str 12\nl: !!float 3\nm: yes\nn: 12:30\no: 0b11\np: 1e3\nq: 00.5\nr: '1'\n"
    ),
    "block-scalars-and-flow": 's: "x\\ty"\nt: |\n  a\n  b\nu: >-\n  c\n  d\nv: [1, {w: 2}]\n',
    "anchors-and-merge": "x: &x {y: 1}\nz:\n  <<: *x\n  q: 2\n",
    "float-precision": (
        "a: 3.0000000000000004\nb: 1e400\nc: -1e-400\nd: 9007199254740993\ne: 123456789.123456789\n"
        "f: -1e400\ng: 1.7976931348623157e308\nh: 5e-324\ni: 0.1e-5\nj: 4.556230117172309e+16\n"
    ),
}


@pytest.mark.parametrize("name", sorted(TRICKY_YAML))
def test_yaml_to_yaml_keeps_tricky_values(tmp_path: Path, name: str) -> None:
    text = TRICKY_YAML[name]
    path = write(tmp_path / "t.yaml", text)
    result = invoke("convert", str(path), "--to", "yaml")
    assert result.exit_code == 0, result.output
    assert _same(read_document("out.yaml", result.stdout).data, read_document("in.yaml", text).data)


def test_convert_reads_stdin_with_dash() -> None:
    path = CONFIGS / "examples" / "quickstart.yaml"
    result = invoke("convert", "-", "--to", "json", input=path.read_bytes())
    assert result.exit_code == 0, result.output
    assert _same(json.loads(result.stdout), read_document(str(path)).data)


def test_convert_json_to_yaml_from_stdin() -> None:
    data = {"version": 1, "name": "yes", "labels": {"on": "off", "when": "2024-01-01"}}
    result = invoke("convert", "-", "--to", "yaml", input=json.dumps(data))
    assert result.exit_code == 0, result.output
    assert _same(read_document("x.yaml", result.stdout).data, data)


def test_convert_of_a_broken_file_is_a_located_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "version: 1\nname: [unclosed\n")
    result = invoke("convert", str(path), "--to", "json")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:")
    assert "Traceback" not in result.output


def test_yaml_infinity_cannot_become_json(tmp_path: Path) -> None:
    path = write(tmp_path / "inf.yaml", "version: 1\nname: x\nparams: {big: .inf}\n")
    result = invoke("convert", str(path), "--to", "json")
    assert result.exit_code == 1
    assert "has no JSON form" in result.stderr


# --- property: valid pipelines built from the models ------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20).filter(
    lambda s: "${" not in s  # `${...}` is interpolation by design
)
_NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-]{0,15}\Z")
_FLOATS = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
_JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _FLOATS | _TEXT


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_RESOURCES = st.builds(
    Resources,
    num_cpus=_opt(_FLOATS),
    memory=_opt(st.integers(0, 2**40)),
    custom=st.dictionaries(_NAMES, _FLOATS, max_size=2),
    concurrency=_opt(st.integers(1, 64)),
)
_RETRY = st.builds(RetryPolicy, max_attempts=st.integers(1, 100), jitter=st.booleans())
_ON_ERROR = st.one_of(
    st.builds(ErrorPolicy, mode=st.sampled_from(["fail", "skip"]), max_failed_rows=_opt(st.integers(0, 10))),
    st.builds(ErrorPolicy, mode=st.just("dead_letter"), dead_letter_path=_TEXT.filter(bool)),
)
_COMMON = {
    "description": _opt(_TEXT),
    "resources": _opt(_RESOURCES),
    "retry": _opt(_RETRY),
    "on_error": _opt(_ON_ERROR),
}


@st.composite
def _pipelines(draw: st.DrawFn) -> Pipeline:
    """read_csv -> a chain of sql/filter/select/limit -> write_parquet, with random optional fields."""
    names = draw(st.lists(_NAMES, min_size=3, max_size=6, unique=True))
    source, *middle, sink = names
    nodes: dict[str, Any] = {
        source: draw(
            st.builds(
                ReadCsv,
                op=st.just("read_csv"),
                path=_TEXT | st.lists(_TEXT, min_size=1, max_size=3),
                delimiter=st.sampled_from([",", ";", "\t", "|"]),
                header=st.booleans(),
                column_types=_opt(
                    st.dictionaries(_TEXT, st.sampled_from(["int64", "string", "double"]), max_size=3)
                ),
                columns=_opt(st.lists(_TEXT, max_size=3)),
                null_values=st.lists(_TEXT, max_size=3),
                batch_rows=_opt(st.integers(1, 10_000_000)),
                **_COMMON,
            )
        )
    }
    previous = source
    for name in middle:
        node = draw(
            st.one_of(
                st.builds(
                    Sql, op=st.just("sql"), input=st.just(previous), query=_TEXT.filter(bool), **_COMMON
                ),
                st.builds(
                    Filter, op=st.just("filter"), input=st.just(previous), where=_TEXT.filter(bool), **_COMMON
                ),
                st.builds(
                    Select,
                    op=st.just("select"),
                    input=st.just(previous),
                    columns=st.lists(_TEXT, min_size=1, max_size=3),
                ),
                st.builds(Limit, op=st.just("limit"), input=st.just(previous), n=st.integers(0, 2**40)),
            )
        )
        nodes[name] = node
        previous = name
    nodes[sink] = draw(
        st.builds(
            WriteParquet,
            op=st.just("write_parquet"),
            input=st.just(previous),
            path=_TEXT,
            overwrite=st.booleans(),
            compression=st.sampled_from(["snappy", "zstd", "gzip", "lz4", "none"]),
            compression_level=_opt(st.integers(-5, 22)),
            row_group_rows=st.integers(1, 2**30),
        )
    )
    return draw(
        st.builds(
            pipeline_model(),
            version=st.just(1),
            name=_TEXT.filter(bool),
            description=_opt(_TEXT),
            labels=st.dictionaries(_TEXT, _TEXT, max_size=3),
            params=st.dictionaries(_TEXT, _JSON_LEAF | st.lists(_JSON_LEAF, max_size=3), max_size=4),
            defaults=st.builds(Defaults, provider=_opt(_TEXT), batch_rows=st.integers(1, 10_000_000)),
            budget=_opt(
                st.builds(Budget, max_cost_usd=_opt(_FLOATS), max_input_tokens=_opt(st.integers(0, 10**9)))
            ),
            nodes=st.just(nodes),
        )
    )


@PIPELINES
@given(_pipelines())
def test_a_pipeline_survives_yaml_and_json(spec: Pipeline) -> None:
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    as_yaml = dump_yaml(data)
    as_json = json.dumps(data, ensure_ascii=False)
    from_yaml = load_pipeline("p.yaml", content=as_yaml, env={}).spec
    from_json = load_pipeline("p.json", content=as_json, env={}).spec
    assert from_yaml == spec
    assert from_json == spec
    assert _same(read_document("p.yaml", as_yaml).data, data)
    assert _same(read_document("p.json", dump_json(data)).data, data)


# --- property: any JSON-like data --------------------------------------------------------------------

TRICKY = [
    "yes", "no", "on", "off", "y", "n", "Yes", "NO", "true", "False", "TRUE", "null", "Null", "NULL", "~", "",
    "1e3", "1E3", "-1e-3", "1.", ".5", "+1", "-0", "007", "0x10", "0X10", "0o17", "0b101", "1_000",
    "12:30:00", "2024-01-01", "2024-01-01T10:00:00Z", ".inf", "-.Inf", ".nan", "NaN", "nan", "inf", "<<",
    "=", "-", "---",
    "...", "? x", "- x", "a: b", "#x", "x #y", " lead", "trail ", "a\nb", "a\n", "\n", "\t", "'", '"', "\\",
    "%x", "@x", "`x", "!x", "&x", "*x", "|", ">", "[", "{", ",", "\x85", "a\u2028b", "\u2029", "\x7f",
    "\x00", "\x1b[0m", "\ufeff", "é", "\U0001f600", "\r\n", "${HOME}", "$${x}",
]  # fmt: skip
_KEYS = st.sampled_from(TRICKY) | st.text(max_size=8)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False)
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda x: float(f"{x:e}"))
    | st.text()
    | st.sampled_from(TRICKY)
)
_DATA = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=25,
)


@PROPERTY
@given(_DATA)
def test_any_json_like_data_survives_dump_yaml_then_read(data: Any) -> None:
    text = dump_yaml(data)
    assert _same(read_document("x.yaml", text).data, data), text


@PROPERTY
@given(_DATA)
def test_any_json_like_data_survives_convert(data: Any) -> None:
    assume(not any(isinstance(x, float) and math.isinf(x) for x in _leaves(data)))  # JSON has no infinity
    as_json = dump_json(data)
    assert _same(read_document("x.json", as_json).data, data), as_json
    as_yaml = convert("x.json", as_json, "yaml")
    assert _same(read_document("x.yaml", as_yaml).data, data), as_yaml
    yaml_again = convert("x.yaml", as_yaml, "yaml")
    assert _same(read_document("y.yaml", yaml_again).data, data), yaml_again


def _leaves(data: Any) -> list[Any]:
    if isinstance(data, dict):
        return [x for v in data.values() for x in _leaves(v)]
    if isinstance(data, list):
        return [x for v in data for x in _leaves(v)]
    return [data]
