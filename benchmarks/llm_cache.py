"""The response cache at size, in the LLM-steps family: rows per second answered from a cache that holds
``entries`` answers, none of them asked of a server.

The cache folder is filled before any clock starts: the answers to the rows of the family's pipeline
(``llm_systems.pipeline_yaml``: ``read_csv -> llm_classify -> write_parquet``), written with
``ResponseCache.put`` exactly as a run would write them, plus filler entries up to ``entries`` in the same
layout (``<fp[:2]>/<fp>.json``, the same bytes a ``put`` writes for a request no row makes), so lookups
walk folders of the size a cache of that many answers has. Then headrace runs the pipeline on two inputs
of different sizes, both wholly cached, in the family's Ray session; the server must see no request.

``rows_per_s`` is the marginal rate ``(big - small) / (seconds(big) - seconds(small))``: the run's fixed
cost (start-up of its pool actor, planning, the writer's commit) cancels out, leaving what each cached row
costs. ``whole_run_rows_per_s`` is the big run's rows over its wall seconds, start-up included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.llm_systems import (
    LABELS,
    CpuByRole,
    LlmCase,
    loopback_server,
    pipeline_yaml,
    texts,
    write_rows,
)

TARGET_ROWS_PER_S = 4_000.0
"""The issue's target: at least this many rows per second answered from a cache of 1 million entries."""


@dataclasses.dataclass(frozen=True)
class CacheCase:
    """A cache of ``entries`` answers; runs of ``small`` and ``big`` rows, every one of them cached."""

    entries: int
    small: int
    big: int
    repeats: int = 3

    @property
    def name(self) -> str:
        return f"cache-{self.entries:,}-entries".replace(",", "_")


def _fill(cache_dir: Path, case: CacheCase, work: Path) -> dict[str, Any]:
    """Cache the answers of the big run's rows, then add filler entries up to ``case.entries``."""
    from engine.check import check_file
    from operators.llm_rows import RowTask, Target
    from operators.providers.base import LlmRequest, LlmResponse
    from operators.providers.cache import FORMAT, ResponseCache

    began = time.perf_counter()
    csv_path = work / "rows-big.csv"
    size = write_rows(csv_path, case.big)
    probe = work / "probe.yaml"
    probe.write_text(
        pipeline_yaml(_llm_case(case.big), csv_path, work / "probe-out", "http://127.0.0.1:9", size)
    )
    spec = check_file(str(probe)).loaded.spec
    node = spec.nodes["classify"]
    task = RowTask(node, dict(spec.params))  # type: ignore[arg-type]
    target = Target("anthropic", node.model)  # type: ignore[union-attr]
    cache = ResponseCache(str(cache_dir))
    for i, text in enumerate(texts(case.big)):
        request = task.request({"id": i, "text": text}, target)
        label = LABELS[i % len(LABELS)]
        cache.put(request, LlmResponse(label, label, 20, 5, node.model, 0.05))  # type: ignore[union-attr]
    # Filler: what a put of another request writes, with os calls (a put costs ten times as much, and a
    # million of them would take longer than the measurement).
    answer = LlmResponse("other", "other", 20, 5, "claude-haiku-4-5", 0.05).to_json()
    made: set[str] = set()
    for i in range(case.entries - case.big):
        request = LlmRequest(
            provider="anthropic", model="claude-haiku-4-5", prompt=f"filler {i}", labels=LABELS
        )
        fingerprint = request.fingerprint()
        folder = str(cache_dir / fingerprint[:2])
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        entry = {"format": FORMAT, "request": request.to_json(), "response": answer}
        data = json.dumps(entry, sort_keys=True, ensure_ascii=False).encode("utf-8")
        fd = os.open(f"{folder}/{fingerprint}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    files = sum(len(os.listdir(cache_dir / d)) for d in os.listdir(cache_dir) if len(d) == 2)
    return {"fill_seconds": round(time.perf_counter() - began, 1), "entries": files}


def _llm_case(rows: int) -> LlmCase:
    return LlmCase("throughput", 0.05, 64, rows)


def _run_once(rows: int, server: Any, work: Path, cache_dir: Path) -> dict[str, Any]:
    from engine.check import check_file
    from engine.runtime import run_checked

    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "rows.csv"
    size = write_rows(csv_path, rows)
    path = work / "pipeline.yaml"
    path.write_text(pipeline_yaml(_llm_case(rows), csv_path, work / "out", server.url, size))
    server.clear()
    previous = os.environ.get("HEADRACE_CACHE_DIR")
    os.environ["HEADRACE_CACHE_DIR"] = str(cache_dir)
    try:
        with CpuByRole() as cpu:
            began = time.perf_counter()
            summary = run_checked(check_file(str(path)), progress=False, cache=True)
            took = time.perf_counter() - began
    finally:
        if previous is None:
            os.environ.pop("HEADRACE_CACHE_DIR", None)
        else:
            os.environ["HEADRACE_CACHE_DIR"] = previous
    if summary.status != "succeeded":
        raise RuntimeError(f"headrace run {summary.status}: {summary.error}")
    usage = summary.nodes["classify"].llm or {}
    if server.requests or usage.get("cached_requests") != rows:
        raise RuntimeError(f"not every row came from the cache: {usage}, {len(server.requests)} requests")
    shutil.rmtree(work / "out", ignore_errors=True)
    return {"rows": rows, "seconds": took, "other_cpu_share": round(cpu.other_cpu_share, 3)}


def measure_cache(case: CacheCase, work: Path, before: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Fill a cache of ``case.entries`` answers, then time wholly cached runs of two sizes (inside the
    family's Ray session); one result with the marginal and whole-run rates."""
    cache_dir = work / "cache"
    filled = _fill(cache_dir, case, work)
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        with loopback_server(_llm_case(case.small)) as server:
            _run_once(case.small, server, work / "warm-up", cache_dir)  # the pool's imports, once
            for i in range(case.repeats):
                before()
                small = _run_once(case.small, server, work / f"small-{i}", cache_dir)
                big = _run_once(case.big, server, work / f"big-{i}", cache_dir)
                runs.append((small, big))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    # A big run no slower than the small one (start-up noise larger than the rows' cost) gives no rate.
    marginal = [
        (b["rows"] - s["rows"]) / (b["seconds"] - s["seconds"])
        for s, b in runs
        if b["seconds"] > s["seconds"]
    ]
    whole = [b["rows"] / b["seconds"] for _, b in runs]
    return {
        "case": case.name,
        **dataclasses.asdict(case),
        **filled,
        "rows_per_s": round(statistics.median(marginal), 1) if marginal else None,
        "rows_per_s_min": round(min(marginal), 1) if marginal else None,
        "rows_per_s_max": round(max(marginal), 1) if marginal else None,
        "whole_run_rows_per_s": round(statistics.median(whole), 1),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "runs": [{"small": s, "big": b} for s, b in runs],
    }
