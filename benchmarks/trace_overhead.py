"""Throughput of a run with tracing and metrics off, with tracing on (file exporter) and with the
metrics endpoint on: the quickstart and a 100k-row CSV pipeline, interleaved, medians reported.

    python -m benchmarks.trace_overhead [--repeats 7]

Not a test: a quick measurement for the observability work (see README "Observability"). Writes
``benchmarks/results/<date>-observability-overhead.json`` and ``.md``. Every mode writes the run's record
(records are always on); "off" is what every other benchmark measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.check import check_file  # noqa: E402
from engine.runtime import run_checked  # noqa: E402

try:
    from engine import metrics, telemetry
except ImportError:  # a tree from before the observability work: the baseline
    metrics = telemetry = None  # type: ignore[assignment]


def csv_pipeline(folder: Path, rows: int) -> Path:
    src = folder / "in.csv"
    with src.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "n"])
        writer.writerows([i, f"row {i} with some text", i % 97] for i in range(rows))
    path = folder / "csv.yaml"
    path.write_text(
        f"""version: 1
name: csv-100k
nodes:
  input: {{op: read_csv, path: {src}, column_types: {{id: int64, text: string, n: int64}}}}
  pick: {{op: sql, input: input, query: "SELECT id, upper(text) AS text, n * 2 AS n FROM batch WHERE n > 3"}}
  output: {{op: write_parquet, input: pick, path: {folder / "out"}, overwrite: true}}
"""
    )
    return path


def timed(path: Path) -> float:
    checked = check_file(str(path))
    began = time.perf_counter()
    summary = run_checked(checked, progress=False, cache=False)
    assert summary.status == "succeeded", summary.error
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    os.environ["HEADRACE_OUT"] = str(folder / "qs")
    os.environ["HEADRACE_TRACE_FILE"] = str(folder / "spans.jsonl")
    ray.init(address="local", num_cpus=2, object_store_memory=512 * 1024 * 1024, include_dashboard=False)
    pipelines = {
        "quickstart": ROOT / "configs" / "examples" / "quickstart.yaml",
        "csv-100k": csv_pipeline(folder, 100_000),
    }
    modes = ["off"] if telemetry is None else ["off", "trace", "metrics"]
    times: dict[tuple[str, str], list[float]] = {}
    for name, path in pipelines.items():
        timed(path)  # warm up: workers, imports
        for _ in range(args.repeats):
            random.shuffle(modes)  # no mode always runs after another
            for mode in modes:
                if mode == "trace":
                    telemetry.configure("file")
                elif mode == "metrics" and not metrics.serving():
                    metrics.serve(0)
                times.setdefault((name, mode), []).append(timed(path))
                if mode == "trace":
                    telemetry.shutdown()
                elif mode == "metrics":
                    metrics.stop()
    rows = []
    for (name, mode), values in sorted(times.items()):
        base = statistics.median(times[(name, "off")])
        med = statistics.median(values)
        rows.append(
            {
                "pipeline": name,
                "mode": mode,
                "median_s": round(med, 4),
                "min_s": round(min(values), 4),
                "max_s": round(max(values), 4),
                "vs_off": round(med / base - 1, 4),
                "repeats": len(values),
            }
        )
    lines = [
        "# Observability overhead",
        "",
        f"`python -m benchmarks.trace_overhead --repeats {args.repeats}` on {time.strftime('%Y-%m-%d')}: "
        "wall seconds of `run_checked` (median of the repeats, min–max), modes interleaved in a "
        "random order; `trace` exports every span to a file, `metrics` serves the Prometheus endpoint. "
        f"{os.cpu_count()} cores; load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "| pipeline | mode | median s | min–max s | vs off |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {r['mode']} | {r['median_s']:.3f} | {r['min_s']:.3f}–{r['max_s']:.3f} | "
            f"{r['vs_off']:+.1%} |"
        )
    out = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-observability-overhead"
    out.with_suffix(".json").write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ray.shutdown()


if __name__ == "__main__":
    main()
