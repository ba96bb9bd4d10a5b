"""``headrace estimate``: predict each LLM node's calls, tokens and cost before a run."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from engine.cli.common import friendly, set_option
from engine.estimate.results import DEFAULT_SAMPLE_RANGES, DEFAULT_SAMPLE_ROWS

if TYPE_CHECKING:
    from engine.check import CheckedPipeline
    from engine.estimate import Estimate, NodeEstimate

_ROWS_MARK = {"exact": "", "estimated": "~", "upper bound": "<="}


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@click.option(
    "--sample",
    "sample_rows",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLE_ROWS,
    show_default=True,
    help="Rows read from each source, spread over --ranges places of it, and pushed through the pipeline.",
)
@click.option(
    "--ranges",
    "sample_ranges",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLE_RANGES,
    show_default=True,
    help="Places of each source the sample is read from: byte ranges spread evenly over its files "
    "(Parquet: row groups; text files read whole: files).",
)
@click.option(
    "--count-tokens",
    type=click.Choice(["local", "api"]),
    default="local",
    show_default=True,
    help="`local`: about 4 characters a token; `api`: the provider's token-count endpoint "
    "(anthropic, gemini; one request per sampled row).",
)
@click.option(
    "--output-tokens",
    type=click.IntRange(min=1),
    help="Output tokens per llm_map call (default: min(max_tokens, 256), an assumption).",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="NODE=FRACTION",
    help="The share of rows llm_filter NODE keeps (default: all, an upper bound); repeatable.",
)
@click.option(
    "--with-cache",
    is_flag=True,
    help="Count rows whose request is already in the LLM response cache as free, and report them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for tools.")
@friendly
def estimate(
    path: str,
    overrides: tuple[str, ...],
    sample_rows: int,
    sample_ranges: int,
    count_tokens: str,
    output_tokens: int | None,
    keep: tuple[str, ...],
    with_cache: bool,
    as_json: bool,
) -> None:
    """Predict each LLM node's rows, calls, tokens and cost before a run.

    Reads a sample of each source in this process (no Ray, no model calls unless --count-tokens api),
    from places spread evenly over the whole input, scales each place's rows to its share of the input,
    and prices them with the pipeline's prices. Gives the expected cost, its p5-p95 range (from how
    much the places differ) and the worst case. Warns, as PATH:LINE:COL: warning: ..., when the
    expected or worst-case figures pass a budget.
    """
    from engine.check import check_file
    from engine.errors import DataError
    from engine.estimate import EstimateOptions, estimate_checked

    content = sys.stdin.buffer.read() if path == "-" else None
    checked = check_file(path, content=content, overrides=overrides)
    for warning in checked.warnings:
        click.echo(warning.format(), err=True)
    options = EstimateOptions(
        sample_rows=sample_rows,
        sample_ranges=sample_ranges,
        count_tokens=count_tokens,  # type: ignore[arg-type]
        output_tokens=output_tokens,
        with_cache=with_cache,
        keep=_keep(keep, checked),
    )
    try:
        result = estimate_checked(checked, options)
    except DataError as exc:  # unreadable input: the pipeline cannot run as it stands
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for warning in result.warnings:
        click.echo(warning.format(), err=True)
    click.echo(json.dumps(result.as_dict()) if as_json else render(result))


def _keep(values: tuple[str, ...], checked: CheckedPipeline) -> dict[str, float]:
    keep: dict[str, float] = {}
    for value in values:
        node, sep, fraction = value.partition("=")
        try:
            share = float(fraction)
        except ValueError:
            share = -1.0
        if not sep or not 0 <= share <= 1:
            raise click.BadParameter(
                f"{value!r}: expected NODE=FRACTION, a fraction from 0 to 1", param_hint="--keep"
            )
        plan_node = checked.plan.nodes.get(node)  # type: ignore[call-overload]
        if plan_node is None or plan_node.op != "llm_filter":
            raise click.BadParameter(
                f"{node!r} is not an llm_filter node of the pipeline", param_hint="--keep"
            )
        keep[node] = share
    return keep


def render(result: Estimate) -> str:
    """The estimate as a table for people, with how each figure was found."""
    how = result.method
    lines = [
        f"{result.pipeline}: estimated from about {how['sample_rows']:,} rows of each source read from "
        f"{how['sample_ranges']} places spread over it, {how['count_tokens']} token counts, prices as "
        f"of {how['prices_as_of']}",
        "",
    ]
    if not result.nodes:
        lines.append("no LLM nodes: nothing to pay for")
        return "\n".join(lines)
    lines += _table(
        ("source", "rows", "p5-p95", "how"),
        [
            (
                s.node,
                _rows(s.rows, s.basis),
                f"{s.rows_p5:,}-{s.rows_p95:,}" if s.basis != "exact" else "",
                s.how,
            )
            for s in result.sources.values()
        ],
        right=(1, 2),
    )
    lines.append("")
    cached = result.total["cached_calls"] is not None
    header = (
        "node",
        "provider/model",
        "rows",
        "calls",
        *(("cached",) if cached else ()),
        "input tokens",
        "output tokens",
        "expected $",
        "p5-p95 $",
        "worst-case $",
    )
    body = [_node_row(n, cached) for n in result.nodes.values()]
    total = result.total
    mark = "~" if any(n.rows_basis != "exact" for n in result.nodes.values()) else ""
    body.append(
        (
            "total",
            "",
            "",
            f"{mark}{total['calls']:,}",
            *((f"{mark}{total['cached_calls']:,}",) if cached else ()),
            f"{total['input_tokens']:,}",
            f"{total['output_tokens']:,}",
            _usd(total["expected_usd"]),
            f"{_usd(total['usd_p5'])}-{_usd(total['usd_p95'])}",
            _usd(total["worst_case_usd"]),
        )
    )
    lines += _table(header, body, right=tuple(range(2, len(header))), rule_before_last=True)
    if result.budget_usd is not None:
        budget = result.budget_usd
        shares = [
            f"{total[k] / budget:,.0%}" if budget else "all" for k in ("expected_usd", "worst_case_usd")
        ]
        lines += [
            "",
            f"budget.max_cost_usd: ${_usd(budget)} (expected {shares[0]} of it, worst case {shares[1]})",
        ]
    lines += ["", "how:"]
    methods = {n.input_tokens_method for n in result.nodes.values()}
    for method in sorted(methods):
        users = [n.node for n in result.nodes.values() if n.input_tokens_method == method]
        lines.append(f"  input tokens ({', '.join(users)}): {method}")
    for node in result.nodes.values():
        lines.append(
            f"  {node.node}: {node.sampled_rows:,} sampled rows from {node.sample_ranges} ranges of "
            f"'{node.source}' reach it; rows {node.rows_basis}"
        )
        lines.append(f"  {node.node}: output tokens: {node.output_tokens_basis}")
        lines += [f"  {node.node}: {note}" for note in node.notes]
    lines.append(f"  range: {result.method['range']}")
    lines.append(f"  worst case: {result.method['worst_case']}")
    lines.append("  rows: ~ estimated from the sample, <= an upper bound, plain exact")
    return "\n".join(lines)


def _node_row(node: NodeEstimate, cached: bool) -> tuple[str, ...]:
    mark = _ROWS_MARK[node.rows_basis]
    return (
        node.node,
        f"{node.provider}/{node.model}" + (" (batch)" if node.mode == "batch" else ""),
        _rows(node.rows, node.rows_basis),
        f"{mark}{node.calls:,}",
        *((f"{mark}{node.cached_calls or 0:,}",) if cached else ()),
        f"{node.input_tokens:,}",
        f"{node.output_tokens:,}",
        _usd(node.expected_usd),
        f"{_usd(node.usd_p5)}-{_usd(node.usd_p95)}",
        _usd(node.worst_case_usd),
    )


def _rows(rows: int, basis: str) -> str:
    return f"{_ROWS_MARK[basis]}{rows:,}"


def _usd(amount: float) -> str:
    return f"{amount:,.4f}" if amount < 100 else f"{amount:,.2f}"


def _table(
    header: tuple[str, ...],
    rows: list[tuple[str, ...]],
    *,
    right: tuple[int, ...] = (),
    rule_before_last: bool = False,
) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(header)]
    for i, row in enumerate(rows):
        if rule_before_last and i == len(rows) - 1:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(row))
    return out
