"""``headrace bench``'s terminal output: one table of the variants' figures (median and min–max over
repeats), each variant's nodes and LLM nodes, the machines of a cluster, and the baseline check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.bench.baseline import describe


def render_table(doc: Mapping[str, Any]) -> str:
    """The results document as text for people."""
    where = doc["where"]
    machine = doc["machine"]
    settings = doc["settings"]
    head = (
        f"bench {doc['pipeline']} ({doc['path']}): {len(doc['variants'])} variant(s) x "
        f"{settings['repeats']} repeat(s) after {settings['warmup']} warm-up run(s), {_where(where)}; "
        f"{machine['cores']} cores, {machine['cpu_model']}, load {machine['load_average_at_start'][0]:g}"
    )
    lines = [head]
    sp = _spread
    for built in doc["inputs"]:
        lines.append(f"  input {built['node']}: {built['bytes'] / 1e6:,.1f} MB, {built['rows']:,} rows")
    columns = [
        ("wall s", "wall_s", 3),
        ("MB/s", "input_mb_per_s", 2),
        ("rows/s", "rows_per_s", 0),
        ("CPU-s/GB", "cpu_s_per_gb", 1),
        ("peak MB", "peak_memory_mb", 0),
        ("store MB", "peak_object_store_mb", 0),
        ("others CPU", "other_cpu_share", 2),
    ]
    cells = [["variant", *(c[0] for c in columns)]]
    for v in doc["variants"]:
        cells.append([v["name"], *(sp(v["figures"].get(key), digits) for _, key, digits in columns)])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for number, row in enumerate(cells):
        text = "  ".join(
            cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        lines.append("  " + text)
        if number == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for v in doc["variants"]:
        lines.append(f"  {v['name']}:")
        for node, f in v["figures"]["nodes"].items():
            lines.append(f"    node {node}: {sp(f['rows_per_s'], 0)} rows/s, {sp(f['seconds'], 3)} s")
        for node, f in v["figures"]["llm"].items():
            share = f["rate_limit_share"]
            lines.append(
                f"    llm {node}: {sp(f['requests_per_s'], 1)} requests/s, {sp(f['tokens_per_s'], 0)} "
                f"tokens/s, ${sp(f['cost_per_1k_rows'], 4)} per 1,000 rows, "
                + (f"{sp(share, 3)} of the rate limit, " if share else "no rate limit configured, ")
                + f"{sp(f['retries'], 0)} retries"
            )
        if len(v["figures"]["machines"]) > 1 or where["mode"] == "cluster":
            for machine_id, m in v["figures"]["machines"].items():
                lines.append(
                    f"    machine {m['host']} ({machine_id[:12]}): peak {sp(m['peak_memory_mb'], 0)} MB, "
                    f"store {sp(m['peak_object_store_mb'], 0)} MB, {sp(m['tree_cpu_s'], 2)} CPU-s"
                )
        if v["discarded_repeats"]:
            shares = ", ".join(f"{d['other_cpu_share']:.0%}" for d in v["discarded_repeats"])
            lines.append(
                f"    run again: {len(v['discarded_repeats'])} repeat(s) disturbed (others took {shares})"
            )
    lines.append("  figures: median (min-max) over repeats; '-': not measured")
    if doc.get("baseline") is not None:
        lines += describe(doc["baseline"])
    return "\n".join(lines)


def _where(where: Mapping[str, Any]) -> str:
    if where["mode"] == "served":
        return f"on the engine at {where['engine']}"
    if where["mode"] == "cluster":
        return f"on the cluster at {where['address']} ({where['nodes']} nodes)"
    return "on a Ray in this process"


def _spread(figure: Mapping[str, float] | None, digits: int) -> str:
    if figure is None:
        return "-"

    def fmt(x: float) -> str:
        return f"{x:,.{digits}f}"

    if figure["min"] == figure["max"]:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} ({fmt(figure['min'])}-{fmt(figure['max'])})"
