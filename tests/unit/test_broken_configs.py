"""A corpus of broken pipeline files: each is refused with exit 1 and one exactly located line.

Every case names the line and column a user's editor should jump to and words the message must hold.
All cases run through the CLI in-process; a handful also run as real processes, so the console script
and ``python -c`` entry points are covered end to end.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.check import check_file
from engine.errors import ConfigError
from tests.unit.helpers import (
    VALID_PIPELINE,
    assert_no_traceback,
    diagnostic_lines,
    invoke,
    run_process,
    write,
)


@dataclass(frozen=True)
class Case:
    """A broken file, where its problem is, and what the message must say."""

    content: str | bytes | Callable[[], bytes]
    line: int
    col: int
    message: tuple[str, ...]
    filename: str = "pipeline.yaml"
    args: tuple[str, ...] = ()
    warnings: int = 0
    """Warning lines expected besides the error (e.g. a node left unused by the broken reference)."""

    def data(self) -> str | bytes:
        return self.content() if callable(self.content) else self.content


def _edit(base: str, **replace: str) -> str:
    """``base`` with whole lines swapped, e.g. ``l6="    path: x"``; the text ``<drop>`` removes the line."""
    lines = base.splitlines()
    for key, text in replace.items():
        lines[int(key[1:]) - 1] = text
    return "\n".join(line for line in lines if line != "<drop>") + "\n"


def _valid(**replace: str) -> str:
    return _edit(VALID_PIPELINE, **replace)


HEAD = "version: 1\nname: demo\n"

BILLION_LAUGHS = HEAD + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi", strict=True)
)

STATE_GRAPH = """\
version: 1
name: review-loop
max_steps: 10
state:
  fields:
    score: {type: integer, default: 0}
nodes:
  write: {op: call, fn: steps:write}
  review: {op: call, fn: steps:review}
edges:
  - {from: START, to: write}
  - {from: write, to: review}
  - from: review
    branches:
      - {when: "score >= 8", to: END}
      - {to: write}
"""
"""A valid state graph: line 15 holds the condition (col 16), line 16 the fallback target (col 14)."""


def _graph(**replace: str) -> str:
    return _edit(STATE_GRAPH, **replace)


LLM_PIPELINE = """\
version: 1
name: triage
nodes:
  input:
    op: read_csv
    path: tickets.csv
    column_types: {id: int64, body: string}
    columns: [id, body]
  classify:
    op: llm_classify
    input: input
    prompt: "Ticket: {{ body }}"
    labels: [bug, billing, other]
  output:
    op: write_parquet
    input: classify
    path: out
defaults: {provider: offline}
"""
"""A valid LLM pipeline with declared input columns: line 12 is the prompt (value at col 13); its
provider is set last so that adding it moved no line (an LLM node without one does not compile)."""


def _llm(**replace: str) -> str:
    return _edit(LLM_PIPELINE, **replace)


def _fifty_mib() -> bytes:
    return HEAD.encode() + b"# " + b"x" * (50 * 1024 * 1024) + b"\n"


CASES: dict[str, Case] = {
    # --- structure and types ---------------------------------------------------------------------
    "unknown-key-three-levels-deep": Case(
        VALID_PIPELINE + "    resources:\n      memry: 2GiB\n",
        12,
        7,
        ("unknown key 'memry'", "did you mean 'memory'?", "nodes.output.resources.memry"),
    ),
    "unknown-top-level-key": Case(
        VALID_PIPELINE + "budgte: {max_cost_usd: 5}\n",
        11,
        1,
        ("unknown key 'budgte'", "did you mean 'budget'?"),
    ),
    "wrong-type": Case(
        _valid(l6="    path: data.csv\n    header: maybe"), 7, 13, ("expected true or false, got 'maybe'",)
    ),
    "wrong-type-nodes-is-a-list": Case(
        HEAD + "nodes: [input, output]\n", 3, 8, ("expected a mapping, got a list",)
    ),
    "missing-required-field": Case(
        _valid(l10="    overwrite: true"), 7, 3, ("missing required field 'path'", "nodes.output")
    ),
    "bad-reference-to-another-node": Case(
        _valid(l9="    input: inptu"), 9, 12, ("'inptu' is not a node", "did you mean 'input'?"), warnings=1
    ),
    "reads-a-sink": Case(
        VALID_PIPELINE + "  again:\n    op: write_csv\n    input: output\n    path: out2\n",
        13,
        12,
        ("'output' is a sink node", "produces no data"),
    ),
    "node-reads-itself": Case(
        _valid(l9="    input: output"), 9, 12, ("node 'output' reads its own output",), warnings=1
    ),
    "data-cycle": Case(
        HEAD
        + "nodes:\n"
        + "  src: {op: read_csv, path: data.csv}\n"
        + "  a: {op: sql, input: [src, c], query: SELECT * FROM batch}\n"
        + "  b: {op: filter, input: a, where: 'id > 0'}\n"
        + "  c: {op: filter, input: b, where: 'id > 1'}\n"
        + "  out: {op: write_parquet, input: c, path: out}\n",
        5,
        23,
        ("data cycle: a -> b -> c -> a",),
    ),
    "unknown-op-did-you-mean": Case(
        _valid(l5="    op: read_cvs"), 5, 9, ("unknown op 'read_cvs'", "did you mean 'read_csv'?")
    ),
    "node-without-op": Case(_valid(l5="    delimiter: ','"), 4, 3, ("the node has no 'op'",)),
    "invalid-node-name": Case(
        _valid(l4="  2input:", l9="    input: 2input"),
        4,
        3,
        ("'2input' is not a valid name", "starts with a letter"),
    ),
    "empty-name": Case(_valid(l2="name: ''"), 2, 7, ("at least 1 character",)),
    "negative-num-cpus": Case(
        VALID_PIPELINE + "    resources: {num_cpus: -1}\n", 11, 27, ("greater than or equal to 0", "num_cpus")
    ),
    "bad-memory-size": Case(
        VALID_PIPELINE + "    resources:\n      memory: lots\n", 12, 15, ("'lots' is not a size", "512MiB")
    ),
    "dead-letter-without-path": Case(
        VALID_PIPELINE + "    on_error:\n      mode: dead_letter\n",
        12,
        7,
        ("`mode: dead_letter` needs `dead_letter_path`",),
    ),
    "llm-classify-one-label": Case(
        _llm(l13="    labels: [bug]"), 13, 13, ("at least 2 items", "nodes.classify.labels")
    ),
    "llm-classify-labels-repeated": Case(
        _llm(l13="    labels: [bug, billing, bug]"), 13, 13, ("labels repeat: bug",)
    ),
    "select-unknown-column": Case(
        _llm(l10="    op: select", l12="    columns: [id, bdy]", l13="    description: keep two columns"),
        12,
        19,
        ("column 'bdy' is not in the input of 'classify'", "did you mean 'body'?"),
    ),
    # --- templates and conditions ----------------------------------------------------------------
    "prompt-template-syntax-error": Case(
        _llm(l12='    prompt: "Ticket: {{ body "'), 12, 13, ("template syntax error",)
    ),
    "prompt-reads-undeclared-column": Case(
        _llm(l12='    prompt: "Ticket: {{ bdy }}"'),
        12,
        13,
        ("column 'bdy' is not in the input of 'classify'", "did you mean 'body'?"),
    ),
    "prompt-reads-column-read-text-lacks": Case(
        _llm(l5="    op: read_text", l6="    path: notes.txt", l7="    mode: line", l8="    encoding: utf-8"),
        12,
        13,
        ("column 'body' is not in the input of 'classify'", "columns: text"),
    ),
    "state-loop-without-max-steps": Case(
        _graph(l3="<drop>"), 11, 5, ("state loop write -> review -> write has no bound", "max_steps")
    ),
    "condition-reads-unknown-state-field": Case(
        _graph(l15='      - {when: "scroe >= 8", to: END}'),
        15,
        16,
        ("condition reads 'scroe', which is not a state field", "did you mean 'score'?"),
    ),
    "condition-syntax-error": Case(
        _graph(l15='      - {when: "score >=", to: END}'), 15, 16, ("condition syntax error",)
    ),
    "edge-to-unknown-node": Case(
        _graph(l16="      - {to: wrte}"), 16, 14, ("'wrte' is not a node", "did you mean 'write'?")
    ),
    "edge-from-end": Case(
        _graph(l12="  - {from: write, to: review}\n  - {from: END, to: write}"),
        13,
        12,
        ("an edge cannot leave END",),
    ),
    "edge-to-start": Case(_graph(l16="      - {to: START}"), 16, 14, ("an edge cannot lead to START",)),
    "edge-with-to-and-branches": Case(
        _graph(l11="  - {from: START, to: write, branches: [{to: END}]}"),
        11,
        5,
        ("exactly one of `to` and `branches`",),
    ),
    "branch-without-when-not-last": Case(
        _graph(l15="      - {to: write}", l16='      - {when: "score >= 8", to: END}'),
        15,
        9,
        ("a branch without `when` must come last",),
    ),
    "state-nodes-without-edges": Case(
        HEAD + "nodes:\n  write: {op: call, fn: steps:write}\n", 3, 1, ("state nodes but no `edges`",)
    ),
    # --- versions ---------------------------------------------------------------------------------
    "future-version": Case(
        _valid(l1="version: 3"), 1, 10, ("format v3; this headrace reads up to v1", "upgrade headrace")
    ),
    "missing-version": Case(
        VALID_PIPELINE.replace("version: 1\n", ""), 1, 1, ("missing required field `version`",)
    ),
    "version-as-a-string": Case(_valid(l1='version: "1"'), 1, 10, ("`version` must be a whole number",)),
    "version-with-bom": Case("\ufeff" + _valid(l1="version: 2"), 1, 10, ("format v2",)),
    # --- syntax -----------------------------------------------------------------------------------
    "duplicate-key-yaml": Case(
        _valid(l6="    path: data.csv\n    path: other.csv"),
        7,
        5,
        ("duplicate key 'path' (first at line 6)",),
    ),
    "duplicate-key-json": Case(
        '{\n  "version": 1,\n  "name": "demo",\n  "name": "again",\n  "nodes": {}\n}\n',
        4,
        3,
        ("duplicate key 'name' (first at line 3)",),
        filename="pipeline.json",
    ),
    "tab-indentation": Case(_valid(l5="\top: read_csv"), 5, 1, ("YAML syntax", "spaces, not tabs")),
    "unterminated-string": Case(_valid(l6='    path: "data.csv'), 6, 11, ("quoted string is never closed",)),
    "unknown-escape-in-string": Case(
        _valid(l6='    path: "data\\qcsv"'), 6, 16, ("unknown escape character", "opened at 6:11")
    ),
    "unknown-anchor": Case(_valid(l6="    path: *where"), 6, 11, ("unknown or recursive anchor '*where'",)),
    "collection-as-key": Case(HEAD + "? [a, b]\n: c\n", 3, 3, ("mapping keys must be plain scalars",)),
    "bad-int-tag": Case(HEAD + "max_steps: !!int ten\n", 3, 12, ("'ten' is not a valid !!int",)),
    "empty-file": Case("", 1, 1, ("the file is empty",)),
    "whitespace-only-file": Case("\n   \n\n", 1, 1, ("the file is empty",)),
    "comments-only-file": Case("# a pipeline\n\n  # to be written\n", 1, 1, ("the file is empty",)),
    "binary-garbage": Case(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", 3, 1, ("binary data",)),
    "nul-byte": Case(b"version: 1\nname: de\x00mo\n", 2, 9, ("binary data (a NUL byte)",)),
    "control-character": Case(b"version: 1\nname: de\x07mo\n", 2, 9, ("control character",)),
    "c1-control-in-yaml": Case(
        "version: 1\nname: naïve\u0080\n", 2, 12, ("character U+0080 is not allowed in YAML text",)
    ),
    "del-character-in-yaml": Case(b"version: 1\nname: a\x7fb\n", 2, 8, ("character U+007F is not allowed",)),
    "invalid-utf8": Case(
        b"version: 1\nname: caf\xe9\n", 2, 10, ("not UTF-8 text (byte 0xe9)", "save the file as UTF-8")
    ),
    "list-at-root": Case(
        "- version: 1\n- name: demo\n", 1, 1, ("top level must be a mapping", "found a list")
    ),
    "scalar-at-root": Case(
        "just some words\n", 1, 1, ("top level must be a mapping", "found a single value")
    ),
    "multiple-yaml-documents": Case(
        VALID_PIPELINE + "---\nversion: 1\n", 11, 1, ("more than one YAML document",)
    ),
    "python-object-tag": Case(
        HEAD + "description: !!python/object/apply:os.system ['echo hacked']\nnodes: {}\n",
        3,
        14,
        ("python/object/apply:os.system' is not allowed", "tags that build objects are refused"),
    ),
    "custom-local-tag": Case(
        HEAD + "description: !secret value\n", 3, 14, ("YAML tag '!secret' is not allowed",)
    ),
    "alias-bomb-billion-laughs": Case(BILLION_LAUGHS, 8, 12, ("expands to more than", "billion laughs")),
    "deep-nesting-1000-levels-flow": Case(
        HEAD + "params: {x: " + "[" * 1000 + "]" * 1000 + "}\n", 3, 75, ("nesting deeper than 64 levels",)
    ),
    "deep-nesting-1000-levels-block": Case(
        HEAD + "params:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 1001)),
        67,
        129,
        ("nesting deeper than 64 levels",),
    ),
    "deep-nesting-1000-levels-json": Case(
        '{"version": 1, "params": ' + "[" * 1000 + "]" * 1000 + "}",
        1,
        89,
        ("nesting deeper than 64 levels",),
        filename="pipeline.json",
    ),
    "fifty-mib-file": Case(_fifty_mib, 1, 1, ("pipeline files are limited to 8.0 MiB",)),
    "json-trailing-comma": Case(
        '{\n  "version": 1,\n  "name": "demo",\n}\n',
        3,
        17,
        ("trailing comma before '}'",),
        filename="pipeline.json",
    ),
    "json-trailing-comma-in-array": Case(
        '{"version": 1, "labels": ["a", "b",]}',
        1,
        35,
        ("trailing comma before ']'",),
        filename="pipeline.json",
    ),
    "json-unterminated-string": Case(
        '{\n  "version": 1,\n  "name": "demo\n}\n', 3, 11, ("unterminated string",), filename="pipeline.json"
    ),
    "json-extra-data": Case(
        '{"version": 1}\n{"name": "x"}\n', 2, 1, ("extra data after the JSON document",), filename="p.json"
    ),
    "json-nan": Case('{"version": NaN}', 1, 13, ("unexpected character 'N'",), filename="pipeline.json"),
    "json-unknown-key-deep": Case(
        '{\n  "version": 1,\n  "name": "demo",\n  "nodes": {\n'
        '    "input": {"op": "read_csv", "path": "x.csv", "delimeter": ";"}\n  }\n}\n',
        5,
        50,
        ("unknown key 'delimeter'", "did you mean 'delimiter'?"),
        filename="pipeline.json",
    ),
    "crlf-line-endings": Case(
        (VALID_PIPELINE + "    resources:\n      memry: 2GiB\n").replace("\n", "\r\n"),
        12,
        7,
        ("unknown key 'memry'",),
    ),
    "non-ascii-before-the-error": Case(
        HEAD + "nodes:\n  input: {op: read_csv, path: données.csv, header: peut-être}\n",
        4,
        52,
        ("expected true or false, got 'peut-être'",),
    ),
    "no-such-file": Case(b"", 1, 1, ("no such file",), filename="<missing>"),
    # --- environment and overrides ----------------------------------------------------------------
    "missing-env-var-without-default": Case(
        _valid(l6="    path: ${NOPE}/data.csv"),
        6,
        11,
        ("environment variable NOPE is not set", "${NOPE:-value}"),
    ),
    "malformed-variable-reference": Case(
        _valid(l6="    path: ${1abc}/data.csv"), 6, 11, ("'${1abc}' is not a valid variable reference",)
    ),
    "set-causes-type-error": Case(
        VALID_PIPELINE,
        8,
        5,
        ("expected true or false, got 'maybe'", "value from --set nodes.output.overwrite=maybe"),
        args=("--set", "nodes.output.overwrite=maybe"),
    ),
    "set-wrong-type-for-existing-field": Case(
        VALID_PIPELINE,
        2,
        7,
        ("expected a string, got 123", "value from --set name=123"),
        args=("--set", "name=123"),
    ),
    "set-malformed": Case(
        VALID_PIPELINE, 1, 1, ("expected KEY=VALUE",), args=("--set", "nodes.output.overwrite")
    ),
    "set-malformed-value": Case(
        VALID_PIPELINE, 1, 1, ("the value is not valid YAML",), args=("--set", "labels=[a, b")
    ),
    "set-list-index-out-of-range": Case(
        _llm(),
        13,
        13,
        ("'7' is not an index of the list (length 3)",),
        args=("--set", "nodes.classify.labels.7=x"),
    ),
}

SUBPROCESS_CASES = {
    "unknown-key-three-levels-deep": True,  # console script
    "future-version": False,  # python -c
    "alias-bomb-billion-laughs": True,
    "binary-garbage": False,
    "fifty-mib-file": True,
    "python-object-tag": False,
    "json-trailing-comma": True,
    "set-causes-type-error": False,
}


@pytest.mark.parametrize("base", [VALID_PIPELINE, STATE_GRAPH, LLM_PIPELINE], ids=["data", "state", "llm"])
def test_the_pipelines_the_cases_break_are_valid(tmp_path: Path, base: str) -> None:
    path = write(tmp_path / "base.yaml", base)
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == ""


def _write_case(tmp_path: Path, case: Case) -> Path:
    if case.filename == "<missing>":
        return tmp_path / "missing.yaml"
    return write(tmp_path / case.filename, case.data())


def _check(path: Path, case: Case, exit_code: int, stdout: str, stderr: str) -> None:
    assert_no_traceback(stdout, stderr)
    assert exit_code == 1, (exit_code, stdout, stderr)
    found = diagnostic_lines(stdout + stderr)
    errors = [m for m in found if m["severity"] == "error"]
    assert len(errors) == 1, f"expected exactly one error line, got:\n{stdout}{stderr}"
    assert len(found) == 1 + case.warnings, f"unexpected extra lines:\n{stdout}{stderr}"
    line = errors[0]
    assert line["path"] == str(path)
    assert line["severity"] == "error"
    assert (int(line["line"]), int(line["col"])) == (case.line, case.col), line.group(0)
    for words in case.message:
        assert words in line["message"], line.group(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_config_is_refused_with_one_located_line(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = _write_case(tmp_path, case)
    result = invoke("validate", str(path), *case.args)
    # the command ends through sys.exit; any other exception escaped the CLI's error handling
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    _check(path, case, result.exit_code, result.stdout, result.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_broken_config_through_a_real_process(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = _write_case(tmp_path, case)
    proc = run_process("validate", str(path), *case.args, script=SUBPROCESS_CASES[name])
    _check(path, case, proc.returncode, proc.stdout, proc.stderr)


def test_problems_in_stdin_are_reported_against_dash() -> None:
    result = invoke("validate", "-", input="version: 3\nname: x\nnodes: {}\n")
    assert result.exit_code == 1
    (line,) = diagnostic_lines(result.stdout + result.stderr)
    assert (line["path"], line["line"], line["col"]) == ("-", "1", "10")
    assert "upgrade headrace" in line["message"]


def test_every_problem_gets_its_own_line_in_file_order(tmp_path: Path) -> None:
    text = _valid(l5="    op: read_csv\n    header: maybe", l10="    path: out\n    colour: blue")
    path = write(tmp_path / "two.yaml", text)
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    found = [(int(m["line"]), int(m["col"]), m["message"]) for m in diagnostic_lines(result.stdout)]
    assert [(line, col) for line, col, _ in found] == [(6, 13), (12, 5)]
    assert "expected true or false" in found[0][2]
    assert "unknown key 'colour'" in found[1][2]


def test_an_unused_node_is_a_warning_and_still_valid(tmp_path: Path) -> None:
    text = VALID_PIPELINE + "  spare:\n    op: read_csv\n    path: other.csv\n"
    path = write(tmp_path / "spare.yaml", text)
    result = invoke("validate", str(path))
    assert_no_traceback(result.stdout, result.stderr)
    assert result.exit_code == 0, result.output
    (line,) = diagnostic_lines(result.stdout)
    assert line["severity"] == "warning"
    assert (line["line"], line["col"]) == ("11", "3")
    assert "the output of 'spare' never reaches a sink" in line["message"]
    strict = invoke("validate", "--strict", str(path))
    assert strict.exit_code == 1
    assert diagnostic_lines(strict.stdout)[0]["severity"] == "warning"


def test_an_unreachable_state_node_is_a_warning(tmp_path: Path) -> None:
    text = STATE_GRAPH.replace("nodes:\n", "nodes:\n  lonely: {op: call, fn: steps:lonely}\n")
    path = write(tmp_path / "graph.yaml", text)
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    (line,) = diagnostic_lines(result.stdout)
    assert line["severity"] == "warning"
    assert (line["line"], line["col"]) == ("8", "3")
    assert "state node 'lonely' cannot be reached from START" in line["message"]


# --- property: a damaged file is refused with located problems, never a crash -------------------------

_SEEDS = [
    VALID_PIPELINE,
    LLM_PIPELINE,
    STATE_GRAPH,
    VALID_PIPELINE.replace("\n", "\r\n"),
    '{"version": 1, "name": "x", "nodes": {"a": {"op": "read_csv", "path": "x"},'
    ' "o": {"op": "write_csv", "input": "a", "path": "y"}}}',
]
_PIECES = [*":-[]{}\"'#&*!|>,?%@`\t\n $.0123456789aXZ<="]
_PIECES += ["START", "END", "op: ", "{{", "}}", "${", "nodes", "input", "<<: *x", "&x ", "\u00e9"]


@st.composite
def _damaged(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(_PIECES))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        if edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged(), st.sampled_from(["p.yaml", "p.json"]))
def test_a_damaged_file_gets_located_one_line_problems_not_a_crash(text: str, name: str) -> None:
    try:
        check_file(name, content=text, env={})
    except ConfigError as exc:
        assert exc.diagnostics, "a refusal must say why"
        lines = len(re.split(r"\r\n|\r|\n", text))
        for diag in exc.diagnostics:
            assert 1 <= diag.line <= lines and diag.col >= 1, (diag.format(), text)
            assert "\n" not in diag.format()
