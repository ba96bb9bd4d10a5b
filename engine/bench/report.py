"""``headrace bench -o report.html``: one self-contained page (inline CSS and SVG, no script, nothing
fetched) with the machine, the settings, the figures of every variant, and three plots: throughput per
variant (median, with the min–max of the repeats), memory over time (the median repeat of each variant)
and each node's time per variant. The SVG elements come from :mod:`engine.records.svg`, the run report's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from engine.bench.baseline import describe
from engine.bench.figures import RUN_FIGURES
from engine.records.svg import el, fit, line_chart, nice_ticks

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #1d2430; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: right; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #f7f8fa; } .muted { color: #667; } .bad { color: #b3261e; }
svg { display: block; margin: 8px 0; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
svg text { font: 12px sans-serif; fill: #333; } .chart-title { font-weight: 600; }
.grid { stroke: #e3e6ea; } .axis { stroke: #555; } .bar { fill: #4f7cc4; } .whisker { stroke: #1d2430; }
path.memory { fill: none; stroke: #c4704f; stroke-width: 1.5; } circle.memory-dot { fill: #c4704f; }
.node-bar { fill: #6aa57a; }
"""


def render_bench_report(doc: Mapping[str, Any]) -> str:
    """The HTML page of a results document (see :func:`engine.bench.session.run_bench`)."""
    variants = doc["variants"]
    title = f"bench · {doc['pipeline']}"
    parts: list[str] = [
        el("h1", None, title),
        el("p", {"class_": "muted"}, f"{doc['path']} · {doc['machine']['date']} · {_where(doc['where'])}"),
        el("h2", None, "Figures per variant"),
        el("p", {"class_": "muted"}, f"median (min–max) over {doc['settings']['repeats']} repeats"),
        _figures_table(variants),
        el("h2", None, "Throughput per variant"),
        _throughput_chart(variants),
        el("h2", None, "Memory over time"),
        el("div", {"class_": "plots"}, *(_memory_chart(v) for v in variants)),
        el("h2", None, "Time per node"),
        _node_chart(variants),
        _node_table(variants),
    ]
    if any(v["figures"]["llm"] for v in variants):
        parts += [el("h2", None, "LLM nodes"), _llm_table(variants)]
    if doc["where"]["mode"] == "cluster" or any(len(v["figures"]["machines"]) > 1 for v in variants):
        parts += [el("h2", None, "Machines"), _machine_table(variants)]
    if doc.get("baseline") is not None:
        lines = describe(doc["baseline"])
        parts += [
            el("h2", None, "Baseline"),
            el("p", {"class_": "baseline"}, lines[0]),
            *(el("p", {"class_": "bad regression"}, line.strip()) for line in lines[1:]),
        ]
    parts += [el("h2", None, "Machine and settings"), _facts(doc)]
    body = Markup("").join(parts)
    return (
        "<!doctype html>\n"
        + str(
            el(
                "html",
                {"lang": "en"},
                el(
                    "head",
                    None,
                    Markup('<meta charset="utf-8">'),
                    el("title", None, title),
                    el("style", None, Markup(_CSS)),
                ),
                el("body", None, body),
            )
        )
        + "\n"
    )


def _where(where: Mapping[str, Any]) -> str:
    if where["mode"] == "served":
        return f"on the engine at {where['engine']}"
    if where["mode"] == "cluster":
        return f"on the cluster at {where['address']} ({where['nodes']} nodes)"
    return "on a Ray in this process"


def _spread(figure: Mapping[str, float] | None, digits: int = 2) -> str:
    if figure is None:
        return "–"
    if figure["min"] == figure["max"]:
        return f"{figure['median']:,.{digits}f}"
    return f"{figure['median']:,.{digits}f} ({figure['min']:,.{digits}f}–{figure['max']:,.{digits}f})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str) -> Markup:
    return el(
        "table",
        {"class_": css},
        el("thead", None, el("tr", None, *(el("th", None, h) for h in header))),
        el("tbody", None, *(el("tr", None, *(el("td", None, c) for c in row)) for row in rows)),
    )


def _figures_table(variants: Sequence[Mapping[str, Any]]) -> Markup:
    header = el(
        "tr",
        None,
        el("th", None, "variant"),
        *(el("th", {"title": label}, short) for _, label, short in RUN_FIGURES),
    )
    rows = [
        el(
            "tr",
            None,
            el("td", None, v["name"]),
            *(el("td", None, _spread(v["figures"].get(k))) for k, _, _ in RUN_FIGURES),
        )
        for v in variants
    ]
    return el("table", {"class_": "figures"}, el("thead", None, header), el("tbody", None, *rows))


def _node_table(variants: Sequence[Mapping[str, Any]]) -> Markup:
    rows = [
        [v["name"], node, _spread(f["rows_per_s"], 0), _spread(f["seconds"], 3)]
        for v in variants
        for node, f in v["figures"]["nodes"].items()
    ]
    return _table(["variant", "node", "rows/s", "seconds"], rows, "nodes")


def _llm_table(variants: Sequence[Mapping[str, Any]]) -> Markup:
    rows = [
        [
            v["name"],
            node,
            _spread(f["requests_per_s"]),
            _spread(f["tokens_per_s"], 0),
            _spread(f["cost_per_1k_rows"], 4),
            _spread(f["rate_limit_share"], 3) if f["rate_limit_share"] else "no limit configured",
            _spread(f["retries"], 0),
        ]
        for v in variants
        for node, f in v["figures"]["llm"].items()
    ]
    header = [
        "variant",
        "node",
        "requests/s",
        "tokens/s",
        "$ per 1,000 rows",
        "share of rate limit",
        "retries",
    ]
    return _table(header, rows, "llm")


def _machine_table(variants: Sequence[Mapping[str, Any]]) -> Markup:
    rows = [
        [
            v["name"],
            f"{m['host']} ({machine[:12]})",
            _spread(m["peak_memory_mb"], 0),
            _spread(m["peak_object_store_mb"], 0),
            _spread(m["tree_cpu_s"]),
            _spread(m["other_cpu_share"]),
        ]
        for v in variants
        for machine, m in v["figures"]["machines"].items()
    ]
    header = ["variant", "machine", "peak MB", "store MB", "CPU-s", "others' CPU share"]
    return _table(header, rows, "machines")


def _facts(doc: Mapping[str, Any]) -> Markup:
    m = doc["machine"]
    s = doc["settings"]
    rows = [
        ["machine", f"{m['hostname']}: {m['cores']} cores, {m['cpu_model']}, {m['memory_gb']} GB, {m['os']}"],
        ["load average at start", ", ".join(f"{x:g}" for x in m["load_average_at_start"])],
        ["versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)],
        ["repeats", f"{s['repeats']} after {s['warmup']} warm-up run(s)"],
        [
            "disturbed repeats",
            f"run again when others took more than {s['disturbed_share']:.0%} of the CPU "
            f"(at most {s['extra_repeats']} per variant)",
        ],
        ["--set", " ".join(s["sets"]) or "–"],
        [
            "inputs",
            "; ".join(f"{i['node']}: {i['bytes'] / 1e6:,.1f} MB" for i in doc["inputs"]) or "as written",
        ],
        ["outputs", s["outputs"]],
    ]
    return _table(["", ""], rows, "facts")


def _bars(
    items: Sequence[tuple[str, float, float, float]], *, title: str, unit: str, css: str, bar_css: str
) -> Markup:
    """Horizontal bars (label, median, min, max) with min–max whiskers, on one axis from zero."""
    label_w, plot_w, row_h, top = 260.0, 560.0, 22.0, 30.0
    height = top + row_h * max(len(items), 1) + 40.0
    ticks = nice_ticks(0.0, max([hi for _, _, _, hi in items] + [1e-9]), 5)
    scale = plot_w / ticks[-1] if ticks[-1] > 0 else 1.0
    parts = [el("text", {"class_": "chart-title", "x": 0.0, "y": 16.0}, title)]
    for tick in ticks:
        x = label_w + tick * scale
        bottom = top + row_h * len(items)
        parts.append(el("line", {"class_": "grid", "x1": x, "x2": x, "y1": top, "y2": bottom}))
        parts.append(
            el("text", {"class_": "tick", "x": x, "y": bottom + 16, "text_anchor": "middle"}, f"{tick:g}")
        )
    for row, (label, median, low, high) in enumerate(items):
        y = top + row * row_h
        parts.append(
            el("text", {"x": label_w - 8, "y": y + 15, "text_anchor": "end"}, fit(label, label_w - 10))
        )
        parts.append(
            el(
                "rect",
                {
                    "class_": bar_css,
                    "x": label_w,
                    "y": y + 4,
                    "width": max(median * scale, 1.0),
                    "height": 14.0,
                    "data_label": label,
                },
                el("title", None, f"{label}: {median:,.4g} {unit} (min {low:,.4g}, max {high:,.4g})"),
            )
        )
        mid = y + 11
        parts.append(
            el(
                "line",
                {
                    "class_": "whisker",
                    "x1": label_w + low * scale,
                    "x2": label_w + high * scale,
                    "y1": mid,
                    "y2": mid,
                },
            )
        )
    parts.append(
        el(
            "text",
            {"class_": "axis-label", "x": label_w + plot_w / 2, "y": height - 4, "text_anchor": "middle"},
            unit,
        )
    )
    width = label_w + plot_w + 30
    return el(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class_": css,
            "width": width,
            "height": height,
            "viewBox": f"0 0 {width:g} {height:g}",
            "role": "img",
        },
        *parts,
    )


def _throughput_chart(variants: Sequence[Mapping[str, Any]]) -> Markup:
    key, unit = ("input_mb_per_s", "input MB/s")
    if any(v["figures"].get(key) is None for v in variants):
        key, unit = ("rows_per_s", "input rows/s")
    if any(v["figures"].get(key) is None for v in variants):
        key, unit = ("wall_s", "wall seconds")
    items = [
        (v["name"], f["median"], f["min"], f["max"])
        for v in variants
        if (f := v["figures"].get(key)) is not None
    ]
    return _bars(
        items,
        title=f"{unit} per variant (bar: median; line: min–max)",
        unit=unit,
        css="chart throughput",
        bar_css="bar",
    )


def _memory_chart(variant: Mapping[str, Any]) -> Markup:
    points = [(float(t), float(mb)) for t, mb in variant["memory_timeline"]]
    if not points:
        return el("p", {"class_": "muted"}, f"{variant['name']}: memory not measured")
    return line_chart(
        points,
        0.0,
        max(t for t, _ in points),
        title=fit(variant["name"], 380),
        y_label="MB (tree + store)",
        css="memory",
    )


def _node_chart(variants: Sequence[Mapping[str, Any]]) -> Markup:
    items = [
        (f"{v['name']} · {node}" if len(variants) > 1 else node, f["median"], f["min"], f["max"])
        for v in variants
        for node, n in v["figures"]["nodes"].items()
        if (f := n["seconds"]) is not None
    ]
    return _bars(
        items,
        title="seconds per node (summed over its tasks)",
        unit="seconds",
        css="chart node-time",
        bar_css="node-bar",
    )
