"""Templates are bounded in what they build and how long they run (issue 18.4).

Each payload in :data:`BUILDERS` would build 100 M characters or more, or loop for hours, without the
limits; each must stop with ``TemplateLimitError`` naming the template line of the offending expression,
having allocated little memory. :data:`UNSAFE` templates read Python internals: ``headrace validate``
refuses them at their line and column instead of letting every row fail.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from engine.spec.expressions import MAX_OUTPUT_CHARS, TemplateLimitError, condition, render, unsafe_reads
from tests.unit.helpers import invoke

HEAD = "Ticket {{ body }}\n"  # the payload sits on line 2
BUILDERS = {
    "namespace doubled with ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "namespace doubled with +": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "namespace doubled in a set block": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}{{ ns.s|length }}",
    "a list holding itself twice": "{% set ns = namespace(s=['x']) %}{% for i in range(60) %}"
    "{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s }}",
    "ljust": "{{ 'x'.ljust(100000000) }}",
    "rjust": "{{ 'x'.rjust(100000000) }}",
    "center method": "{{ 'x'.center(100000000) }}",
    "zfill": "{{ '1'.zfill(100000000) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(1000000) }}",
    "format width": "{{ '{:>100000000}'.format(body) }}",
    "format precision": "{{ '{:.100000000f}'.format(1) }}",
    "format nested width": "{{ '{:{}}'.format(body, 100000000) }}",
    "format_map width": "{{ '{a:>100000000}'.format_map({'a': 1}) }}",
    "percent width": "{{ '%100000000s' % body }}",
    "percent precision": "{{ '%.100000000f' % 1 }}",
    "percent star": "{{ '%*s' % (100000000, body) }}",
    "format filter": "{{ '%100000000s'|format(body) }}",
    "center filter": "{{ body|center(100000000) }}",
    "indent filter": "{{ ((body ~ '\\n') * 1000)|indent(100000) }}",
    "replace method": "{{ ('a' * 10000).replace('a', 'b' * 10000) }}",
    "replace filter": "{{ ('a' * 10000)|replace('a', 'b' * 10000) }}",
    "string multiplication": "{{ 'a' * 1000000000 }}",
    "list multiplication": "{{ [0] * 1000000000 }}",
    "join of a huge range": "{{ range(100000)|join('x' * 1000) }}",
    "str.join of a huge range": "{{ ('x' * 1000).join(range(100000)|map('string')) }}",
    "macro output": "{% macro m(s) %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endmacro %}"
    "{{ m('x' * 100000) }}",
    "tojson indent": "{{ [[[[1]]]]|tojson(indent=100000000) }}",
    "batch fill": "{{ [1]|batch(100000000, 'x')|list|length }}",
    "slice fill": "{{ [1]|slice(100000000, 'x')|list|length }}",
    "lipsum": "{{ lipsum(n=100000, max=1000) }}",
    "nested loops that print nothing": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "loops over a long string": "{% for a in body * 100000 %}{% for b in body * 100000 %}"
    "{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("payload", list(BUILDERS.values()), ids=list(BUILDERS))
def test_every_way_of_building_is_bounded_before_memory_is_spent(payload: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateLimitError) as err:
            render(HEAD + payload)({"body": "hello", "params": {}})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith("template line 2: "), err.value
    assert peak < 20 * MAX_OUTPUT_CHARS, f"{peak / 1e6:.0f} MB allocated before the limit"


def test_a_condition_that_loops_is_bounded() -> None:
    with pytest.raises(TemplateLimitError):
        condition("(range(100000)|map('string')|join('x' * 1000))|length > 1")({"params": {}})


def test_ordinary_templates_still_render() -> None:
    source = (
        "{{ body|center(11) }}|{{ '%5s'|format('a') }}|{{ '{:>5}'.format('a') }}|{{ [1, 2]|join(',') }}|"
        "{{ 'a' ~ 'b' }}|{% for i in range(3) %}{{ i }}{% endfor %}|{{ body.ljust(7) }}|{{ '%.2f' % 1 }}"
    )
    assert (
        render(source)({"body": "hello", "params": {}}) == "   hello   |    a|    a|1,2|ab|012|hello  |1.00"
    )


UNSAFE = [
    ("{{ ''.__class__ }}", "__class__", 1, 7),
    ("Hello {{ body }}\n{{ body['__globals__'] }}", "__globals__", 2, 10),
    ("{{ body|attr('__class__') }}", "__class__", 1, 15),
    ("{{ '{0.__class__}'.format(body) }}", "__class__", 1, 8),
    ("{{ self._TemplateReference__context }}", "_TemplateReference__context", 1, 9),
]


@pytest.mark.parametrize(("template", "name", "line", "col"), UNSAFE)
def test_unsafe_reads_are_found_with_line_and_column(template: str, name: str, line: int, col: int) -> None:
    assert unsafe_reads(template)[0] == (name, line, col)


@pytest.mark.parametrize(("template", "name", "line", "col"), UNSAFE)
def test_validate_refuses_a_template_reading_internals(
    tmp_path: Path, template: str, name: str, line: int, col: int
) -> None:
    block = "\n".join("      " + line for line in template.splitlines())
    path = tmp_path / "p.yaml"
    path.write_text(
        f"""version: 1
name: dunder
nodes:
  input: {{op: read_csv, path: in.csv, columns: [body]}}
  ask:
    op: llm_map
    input: input
    provider: offline
    model: echo
    prompt: |
{block}
  out: {{op: write_parquet, input: ask, path: out/}}
""",
        encoding="utf-8",
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    assert f"{path}:10:" in result.output  # the prompt field
    assert f"reads '{name}' at its line {line}, column {col}" in result.output


def test_validate_refuses_a_condition_reading_internals(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        """version: 1
name: g
state: {fields: {n: {type: integer, default: 0}}}
nodes:
  step: {op: call, fn: "tests.unit.policy_pkg:Own.step"}
edges:
  - {from: START, to: step}
  - {from: step, branches: [{when: "n.__class__", to: END}, {to: END}]}
""",
        encoding="utf-8",
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    assert f"{path}:8:" in result.output and "'__class__' at its column 2" in result.output
