"""The state-graphs and concurrency families as people read them: markdown with targets, a PNG each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_INVOCATION_LABELS = {
    "headrace": "headrace, no checkpoints",
    "langgraph": "LangGraph, no checkpointer",
    "headrace_memory": "headrace, `memory://`",
    "langgraph_memory": "LangGraph, `InMemorySaver`",
    "headrace_sqlite": "headrace, `sqlite:///`",
    "langgraph_sqlite": "LangGraph, `SqliteSaver`",
}


def _fig(s: dict[str, Any], fmt: str = ",.0f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def _header(doc: dict[str, Any]) -> list[str]:
    """Title, command, results file, machine and load, then the targets table."""
    m = doc["machine"]
    v = m["versions"]
    return [
        f"# Benchmarks: {doc['family']} ({doc['mode']})",
        "",
        f"`{doc['command']}` on {m['date'][:10]}; results file `{doc['results_file']}`; "
        f"wall time {doc.get('wall_seconds', 0):.0f} s; {doc['repeats']} repeats, median (min–max).",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM, {m['os']}. "
        f"Python {m['python']}, Ray {v.get('ray')}, LangGraph {v.get('langgraph')}. Load average "
        f"at start {', '.join(str(x) for x in m['load_average_at_start'])}, at end "
        f"{', '.join(str(x) for x in doc['load_average_at_end'])}; processes outside the benchmark took "
        f"{doc.get('others_cpu_share', 0):.0%} of the machine's CPU while it ran.",
        "",
        "## Targets",
        "",
        "| target | measured | status |",
        "| --- | --- | --- |",
        *(f"| {t['target']} | {t['measured']} | {t['status']} |" for t in doc["targets"]),
        "",
    ]


def render_graphs_markdown(doc: dict[str, Any]) -> str:
    """The state-graphs results: one table per case (median, min–max) and the targets, met or not."""
    r = doc["results"]
    inv, chain, size = r["invocations"], r["chain_50"], r["checkpoint_bytes"]
    lines = [
        *_header(doc),
        "## 3-node chain, invocations/s (one after another, in one thread)",
        "",
        "| system | invocations/s |",
        "| --- | --- |",
        *(f"| {_INVOCATION_LABELS[k]} | {_fig(s)} |" for k, s in inv["systems"].items()),
    ]
    if isinstance(inv.get("langgraph_sqlite"), str):
        lines.append(f"| LangGraph, `SqliteSaver` | {inv['langgraph_sqlite']} |")
    ratios = ", ".join(f"{k}: {x}×" for k, x in inv["ratios"].items())
    h, lg = chain["systems"]["headrace"], chain["systems"]["langgraph"]
    hb, lb = size["systems"]["headrace"], size["systems"]["langgraph"]
    lines += [
        "",
        f"Ratios of medians: {ratios}.",
        "",
        f"## {chain['nodes']}-node chain, µs per step (no checkpoints)",
        "",
        "| headrace | LangGraph | LangGraph ÷ headrace |",
        "| --- | --- | --- |",
        f"| {_fig(h, '.1f')} | {_fig(lg, '.1f')} | {chain['ratios']['langgraph/headrace']}× |",
        "",
        f"## Checkpoint bytes after a {size['steps']}-step loop appending one item per step",
        "",
        "| headrace (SQLite file) | LangGraph | LangGraph ÷ headrace |",
        "| --- | --- | --- |",
        f"| {hb['bytes']:,} | {lb['bytes']:,} | {size['ratios']['langgraph/headrace']}× |",
        "",
        f"LangGraph figure: {lb['how']}.",
        "",
        "![headrace advantage over LangGraph](graphs.png)",
        "",
    ]
    return "\n".join(lines)


def render_concurrency_markdown(doc: dict[str, Any]) -> str:
    """The concurrency results: the Engine against a raw Ray task, the concurrent runs against LangGraph,
    and the targets, met or not."""
    eng = doc["results"]["engine"]
    lat, rate = eng["submit_to_first_node_ms"]["systems"], eng["throughput_per_s"]["systems"]
    wall = eng["concurrent_sleepy_wall_s"]
    lines = [
        *_header(doc),
        "## Engine against raw Ray tasks",
        "",
        "| figure | headrace Engine | raw Ray task |",
        "| --- | --- | --- |",
        f"| submit-to-first-node / round trip p50, ms | {_fig(lat['headrace']['p50'], '.3f')} | "
        f"{_fig(lat['ray_tasks']['p50'], '.3f')} |",
        f"| p99, ms | {_fig(lat['headrace']['p99'], '.3f')} | {_fig(lat['ray_tasks']['p99'], '.3f')} |",
        f"| trivial 3-node pipelines/s vs trivial tasks/s | {_fig(rate['headrace'])} | "
        f"{_fig(rate['ray_tasks'])} |",
        "",
        f"headrace runs a graph's plain-Python nodes in the Engine's event loop, so its latency is an "
        f"in-process figure; the Ray column is a task on a worker process. "
        f"{eng['submit_to_first_node_ms']['note']}.",
        "",
        f"## {wall['runs']:,} concurrent 3-node runs, each node awaiting 100 ms (ideal {wall['ideal_s']} s)",
        "",
        "| headrace Engine, s | LangGraph `ainvoke` + `asyncio.gather`, s |",
        "| --- | --- |",
        f"| {_fig(wall['systems']['headrace'], '.3f')} | {_fig(wall['systems']['langgraph'], '.3f')} |",
        "",
        "![headrace advantage over Ray tasks and LangGraph](concurrency.png)",
        "",
    ]
    return "\n".join(lines)


def render_graphs_plot(doc: dict[str, Any], results_dir: Path) -> Path:
    """``graphs.png``: LangGraph ÷ headrace for every compared figure (above 1: headrace is better)."""
    r = doc["results"]
    kinds = {"headrace": "no checkpoints", "headrace_memory": "memory", "headrace_sqlite": "SQLite"}
    bars = {f"invocations/s\n{kinds[k.split('/')[0]]}": x for k, x in r["invocations"]["ratios"].items()}
    bars["50-node chain\nµs/step"] = r["chain_50"]["ratios"]["langgraph/headrace"]
    bars["checkpoint\nbytes"] = r["checkpoint_bytes"]["ratios"]["langgraph/headrace"]
    title = f"State graphs vs LangGraph ({doc['machine']['date'][:10]}, {doc['mode']})"
    return _advantage_plot(bars, title, results_dir / "graphs.png")


def render_concurrency_plot(doc: dict[str, Any], results_dir: Path) -> Path:
    """``concurrency.png``: baseline ÷ headrace for the latency and the concurrent runs' wall time."""
    eng = doc["results"]["engine"]
    wall = eng["concurrent_sleepy_wall_s"]
    lat = eng["submit_to_first_node_ms"]["systems"]
    bars = {
        "latency p50\nvs Ray task": lat["ray_tasks"]["p50"]["median"] / lat["headrace"]["p50"]["median"],
        f"{wall['runs']:,} concurrent\nwall vs LangGraph": wall["systems"]["langgraph"]["median"]
        / wall["systems"]["headrace"]["median"],
    }
    title = f"Concurrency vs Ray tasks / LangGraph ({doc['machine']['date'][:10]}, {doc['mode']})"
    return _advantage_plot(bars, title, results_dir / "concurrency.png")


def _advantage_plot(bars: dict[str, float], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 * len(bars) + 1.5), 4))
    ax.bar(list(bars), list(bars.values()), color="tab:blue")
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("headrace advantage (×, log)")
    ax.set_title(title, fontsize=10)
    for i, x in enumerate(bars.values()):
        ax.text(i, x, f"{x:.2g}×", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
