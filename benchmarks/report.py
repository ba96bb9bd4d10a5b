"""Results as people read them: targets judged on same-run ratios, a markdown table, PNG plots.

Every throughput figure is shown as a ratio against the baselines measured in the same run; absolute
MB/s are printed next to them only to say what was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SYSTEM_LABELS = {
    "pyarrow": "pyarrow loop",
    "ray_tasks": "Ray tasks",
    "ray_data": "Ray Data",
    "headrace": "headrace",
}
MEMORY_LIMIT_MB = 1500.0
FLAT_TOLERANCE = 1.25
"""Peak memory counts as flat when the largest input's peak is at most this times the smallest's."""

# (case, baseline, minimum ratio, source of the target)
_THROUGHPUT_TARGETS = [
    ("parquet_transform", "ray_data", 2.0, "brief"),
    ("parquet_transform", "ray_tasks", 0.9, "brief"),
    ("csv_sql", "ray_data", 2.5, "brief"),
    ("parquet_transform", "pyarrow", 0.7, "ARCHITECTURE.md"),
    ("csv_sql", "pyarrow", 0.7, "ARCHITECTURE.md"),
    ("parquet_transform", "ray_data", 1.5, "ARCHITECTURE.md"),
    ("csv_sql", "ray_data", 1.5, "ARCHITECTURE.md"),
]


def _by_case(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        cases.setdefault(r["case"], []).append(r)
    for rows in cases.values():
        rows.sort(key=lambda r: r["size_bytes"])
    return cases


def _headrace(r: dict[str, Any]) -> dict[str, Any] | None:
    h = r["systems"].get("headrace")
    return h if h and "mb_per_s" in h else None


def evaluate_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each performance target with what this run measured and ``met`` / ``not met`` / ``not measured``."""
    cases = _by_case(results)
    out = []
    for case, base, minimum, source in _THROUGHPUT_TARGETS:
        label = f"{case}: headrace ≥ {minimum:g}× {SYSTEM_LABELS[base]}"
        ratios = [(r["size_label"], r["ratios"].get("headrace", {}).get(base)) for r in cases.get(case, [])]
        ratios = [(s, x) for s, x in ratios if x is not None]
        if not ratios:
            out.append({"target": label, "source": source, "measured": "-", "status": "not measured"})
            continue
        measured = ", ".join(f"{s}: {x:.2f}×" for s, x in ratios)
        met = all(x >= minimum for _, x in ratios)
        out.append({"target": label, "source": source, "measured": measured, "status": _met(met)})
    out.extend(_memory_targets(cases))
    return out


def _memory_targets(cases: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    peaks = [
        (c, r["size_label"], h["peak_memory_mb"])
        for c, rs in cases.items()
        for r in rs
        if (h := _headrace(r))
    ]
    out = []
    if peaks:
        worst = max(peaks, key=lambda p: p[2])
        out.append(
            {
                "target": f"headrace peak memory ≤ {MEMORY_LIMIT_MB / 1000:g} GB (process tree + store)",
                "source": "brief",
                "measured": f"max {worst[2]:.0f} MB ({worst[0]} at {worst[1]})",
                "status": _met(worst[2] <= MEMORY_LIMIT_MB),
            }
        )
    for case, rows in cases.items():
        measured = [(r, h) for r in rows if (h := _headrace(r))]
        if len(measured) < 2:
            continue
        (small, hs), (large, hl) = measured[0], measured[-1]
        growth = hl["peak_memory_mb"] / hs["peak_memory_mb"]
        span = large["size_bytes"] / small["size_bytes"]
        text = (
            f"{small['size_label']} → {large['size_label']}: {hs['peak_memory_mb']:.0f} → "
            f"{hl['peak_memory_mb']:.0f} MB (×{growth:.2f})"
        )
        if growth > FLAT_TOLERANCE:
            status = "not met"
        elif span >= 10 or (small["size_bytes"] >= 1e9 and large["size_bytes"] >= 10e9):
            status = "met"
        else:
            status = "not measured"
            text += f"; input grew only {span:g}×, the target needs 1 GB → 10 GB (full run)"
        out.append(
            {
                "target": f"{case}: headrace peak memory flat from 1 GB to 10 GB (≤ ×{FLAT_TOLERANCE:g})",
                "source": "brief; ARCHITECTURE.md (flat as input grows 10×)",
                "measured": text,
                "status": status,
            }
        )
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def render_markdown(doc: dict[str, Any]) -> str:
    """The results document as markdown: machine, per-case tables with ratios, targets, plots."""
    m = doc["machine"]
    v = m["versions"]
    lines = [
        f"# Benchmarks: {doc['family']} ({doc['mode']})",
        "",
        f"`{doc['command']}` on {m['date'][:10]}; results file `{doc['results_file']}`; "
        f"wall time {doc.get('wall_seconds', 0):.0f} s.",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM, {m['os']}; "
        f"load average at start {', '.join(str(x) for x in m['load_average_at_start'])}. "
        f"Python {m['python']}, Ray {v.get('ray')}, pyarrow {v.get('pyarrow')}, duckdb {v.get('duckdb')}, "
        f"langgraph {v.get('langgraph')}.",
        "",
        "MB/s is input bytes on disk / wall seconds (median of the repeats; min–max in brackets). "
        "Ratios divide headrace's (or a baseline's) median MB/s by the baseline's, from this run. "
        "Peak memory is the largest sample of the driver's whole process tree (driver, GCS, raylet, agents, "
        "workers; anonymous resident memory) plus the object store's resident pages (/dev/shm), in MB. "
        "CPU s/GB is the CPU time of that tree per GB of input (median repeat), a figure less disturbed by "
        "other load than wall time; others' CPU is the largest share of the machine's CPU that processes "
        "outside the benchmark took during a repeat (the machine may be shared; a repeat during which they "
        "took more than 20% is run again, at most twice, and listed under `discarded_repeats`).",
        "",
    ]
    for case, rows in _by_case(doc["results"]).items():
        lines += [f"## {case}: {rows[0].get('description', '')}", "", f"Query: `{rows[0]['query']}`", ""]
        lines += [
            "| size | system | MB/s | reps | × pyarrow loop | × Ray tasks | × Ray Data | peak memory MB | "
            "object store MB | CPU s/GB | others' CPU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            for system, s in r["systems"].items():
                if "mb_per_s" not in s:
                    lines.append(
                        f"| {r['size_label']} | {SYSTEM_LABELS[system]} | failed: {s.get('error')} |"
                    )
                    continue
                ratios = r["ratios"].get(system, {})
                cells = [
                    f"{ratios[b]:.2f}×" if b in ratios else "—" for b in ("pyarrow", "ray_tasks", "ray_data")
                ]
                lines.append(
                    f"| {r['size_label']} | {SYSTEM_LABELS[system]} | {s['mb_per_s']:.0f} "
                    f"({s['mb_per_s_min']:.0f}–{s['mb_per_s_max']:.0f}) | {s['repeats']} | "
                    + " | ".join(cells)
                    + f" | {s['peak_memory_mb']:.0f} | {s['peak_object_store_mb']:.0f} "
                    f"| {s['cpu_s_per_gb']:.1f} | {s['other_cpu_share_max']:.0%} |"
                )
        lines.append("")
        for r in rows:
            d = r["dataset"]
            agree = (
                "every system wrote the same output (rows, sum of ids, text characters, upper-case rows)"
                if r.get("outputs_agree")
                else "**the systems' outputs differ** (see `output_digest` in the results file)"
            )
            lines.append(
                f"- {r['size_label']}: {len(d['files'])} {d['format']} file(s), {d['bytes'] / 1e9:.2f} GB, "
                f"{d['rows']:,} rows; {agree}."
            )
        lines.append("")
    lines += [
        "## Targets",
        "",
        "| target | source | measured in this run | status |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | {t['source']} | {t['measured']} | **{t['status']}** |")
    lines += ["", "![MB/s by system and size](throughput.png)", "", "![Peak memory by size](memory.png)", ""]
    return "\n".join(lines)


def render_plots(doc: dict[str, Any], folder: Path) -> list[Path]:
    """``throughput.png`` (MB/s by system and size) and ``memory.png`` (peak memory by size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = _by_case(doc["results"])
    systems = [s for s in SYSTEM_LABELS if any(s in r["systems"] for rs in cases.values() for r in rs)]
    paths = []
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.2), squeeze=False)
    for ax, (case, rows) in zip(axes[0], cases.items(), strict=True):
        width = 0.8 / max(1, len(systems))
        for i, system in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for j, r in enumerate(rows):
                s = r["systems"].get(system, {})
                if "mb_per_s" in s:
                    xs.append(j + (i - (len(systems) - 1) / 2) * width)
                    ys.append(s["mb_per_s"])
                    lo.append(s["mb_per_s"] - s["mb_per_s_min"])
                    hi.append(s["mb_per_s_max"] - s["mb_per_s"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=SYSTEM_LABELS[system])
        ax.set_xticks(range(len(rows)), [r["size_label"].replace("gb", " GB") for r in rows])
        ax.set_title(case)
        ax.set_ylabel("MB/s (input bytes / wall s)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Streaming transform throughput, {doc['machine']['cores']} cores ({doc['mode']})")
    fig.tight_layout()
    paths.append(folder / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.2), squeeze=False)
    for ax, (case, rows) in zip(axes[0], cases.items(), strict=True):
        for system in systems:
            pts = [
                (r["size_bytes"] / 1e9, r["systems"][system]["peak_memory_mb"])
                for r in rows
                if "peak_memory_mb" in r["systems"].get(system, {})
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=SYSTEM_LABELS[system])
        ax.axhline(MEMORY_LIMIT_MB, color="grey", linestyle="--", linewidth=1, label="target ≤ 1.5 GB")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([r["size_bytes"] / 1e9 for r in rows], [f"{r['size_bytes'] / 1e9:g} GB" for r in rows])
        ax.set_xlabel("input size")
        ax.set_ylabel("peak memory (MB)")
        ax.set_ylim(bottom=0)
        ax.set_title(case)
        ax.legend(fontsize=8)
    fig.suptitle("Peak memory of the process tree + object store")
    fig.tight_layout()
    paths.append(folder / "memory.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
