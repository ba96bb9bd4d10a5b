"""The state-graphs family as people read it: a markdown table with targets, and one PNG."""

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


def render_graphs_markdown(doc: dict[str, Any]) -> str:
    """The family's results: one table per case (median, min–max) and the targets, met or not."""
    m, r = doc["machine"], doc["results"]
    v = m["versions"]
    inv, chain, size, eng = r["invocations"], r["chain_50"], r["checkpoint_bytes"], r["engine"]
    lines = [
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
    lat, rate = eng["submit_to_first_node_ms"]["systems"], eng["throughput_per_s"]["systems"]
    wall = eng["concurrent_sleepy_wall_s"]
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
    ]
    return "\n".join(lines)


def render_graphs_plot(doc: dict[str, Any], results_dir: Path) -> Path:
    """``graphs.png``: headrace ÷ baseline for every compared figure (above 1: headrace is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = doc["results"]
    inv, eng = r["invocations"], r["engine"]
    wall = eng["concurrent_sleepy_wall_s"]["systems"]
    lat = eng["submit_to_first_node_ms"]["systems"]
    kinds = {"headrace": "no checkpoints", "headrace_memory": "memory", "headrace_sqlite": "SQLite"}
    bars = {f"invocations/s\n{kinds[k.split('/')[0]]}": x for k, x in inv["ratios"].items()}
    bars["50-node chain\nµs/step"] = r["chain_50"]["ratios"]["langgraph/headrace"]
    bars["checkpoint\nbytes"] = r["checkpoint_bytes"]["ratios"]["langgraph/headrace"]
    bars["latency p50\nvs Ray task"] = lat["ray_tasks"]["p50"]["median"] / lat["headrace"]["p50"]["median"]
    bars["1,000 concurrent\nwall"] = wall["langgraph"]["median"] / wall["headrace"]["median"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(list(bars), list(bars.values()), color="tab:blue")
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("headrace advantage (×, log)")
    ax.set_title(f"State graphs vs LangGraph / Ray ({doc['machine']['date'][:10]}, {doc['mode']})")
    for i, x in enumerate(bars.values()):
        ax.text(i, x, f"{x:.2g}×", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = results_dir / "graphs.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
