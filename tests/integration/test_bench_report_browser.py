"""The ``headrace bench`` report opened in headless Chromium: one file that renders without a console
error, fetches nothing, and shows every plot (throughput per variant, memory over time, time per node),
the figures of each variant and a baseline's regression."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.bench.baseline import compare, machine_kind
from engine.bench.figures import repeat_figures, variant_figures
from engine.bench.harness import machine_info
from engine.bench.pipeline import inspect_pipeline
from engine.bench.report import render_bench_report
from engine.bench.runners import RunOutcome
from tests.browser import MISSING, chromium

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "examples" / "quickstart.yaml"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    driver = chromium()
    yield driver
    driver.quit()


def _summary(rows: int, seconds: float) -> dict[str, Any]:
    node = {"op": "x", "rows": rows, "seconds": seconds, "bytes_read": 0}
    usage = {
        "requests": rows,
        "cached_requests": 0,
        "failed_requests": 2,
        "input_tokens": 20 * rows,
        "output_tokens": 2 * rows,
        "cost_usd": 0.0,
    }
    return {
        "run_id": "r-1",
        "status": "succeeded",
        "seconds": seconds,
        "retries": 0,
        "nodes": {
            "input": {**node, "bytes_read": 9414},
            "clean": node,
            "normalise": node,
            "triage": {**node, "llm": usage},
            "output": node,
        },
    }


def _variant(name: str, walls: list[float]) -> dict[str, Any]:
    facts = inspect_pipeline(str(QUICKSTART), [])
    outcomes = [
        RunOutcome(
            _summary(217, w / 2),
            w,
            {
                "tree_cpu_s": w * 1.5,
                "peak_memory_mb": 900.0,
                "peak_object_store_mb": 12.0,
                "other_cpu_share": 0.1,
            },
            [(i * 0.1, 800.0 + i) for i in range(int(w * 10))],
            {"node-1": {"host": "a", "peak_memory_mb": 900.0, "tree_cpu_s": 1.0}},
        )
        for w in walls
    ]
    repeats = [repeat_figures(o, facts) for o in outcomes]
    timeline = [[t, mb] for t, mb in outcomes[0].timeline]
    return {
        "name": name,
        "settings": {},
        "repeats": repeats,
        "discarded_repeats": [],
        "figures": variant_figures(repeats),
        "memory_timeline": timeline,
    }


def test_bench_report_renders_cleanly_with_its_plots(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    machine = machine_info()
    where = {"mode": "local", "nodes": 1}
    doc: dict[str, Any] = {
        "pipeline": "quickstart",
        "path": str(QUICKSTART),
        "machine": machine,
        "machine_kind": machine_kind(machine, where),
        "where": where,
        "settings": {
            "repeats": 2,
            "warmup": 1,
            "sets": [],
            "vary": {"defaults.batch_rows": ["40", "1000"]},
            "input_size": None,
            "outputs": "scratch",
            "cache": False,
            "disturbed_share": 0.2,
            "extra_repeats": 2,
        },
        "inputs": [],
        "variants": [
            _variant("defaults.batch_rows=40", [2.0, 2.4]),
            _variant("defaults.batch_rows=1000", [1.0, 1.2]),
        ],
    }
    slower = {**doc, "variants": [_variant(v["name"], [5.0, 5.0]) for v in doc["variants"]]}
    doc["baseline"] = compare(
        slower,
        {"name": "main", **doc, "variants": {v["name"]: {"figures": v["figures"]} for v in doc["variants"]}},
        0.1,
    )
    page = tmp_path / "bench.html"
    page.write_text(render_bench_report(slower | {"baseline": doc["baseline"]}), encoding="utf-8")
    browser.get_log("browser")
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.title == "bench · quickstart"
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    bars = browser.find_elements(By.CSS_SELECTOR, "svg.throughput rect.bar")
    assert [b.get_attribute("data-label") for b in bars] == [
        "defaults.batch_rows=40",
        "defaults.batch_rows=1000",
    ]
    assert all(b.rect["width"] > 0 for b in bars)
    memory = browser.find_elements(By.CSS_SELECTOR, "svg.memory path.memory")
    assert len(memory) == 2 and all(m.rect["width"] > 100 for m in memory)  # drawn across the time axis
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.node-time rect.node-bar")) == 10  # 5 nodes x 2
    rows = browser.find_elements(By.CSS_SELECTOR, "table.figures tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td").text for r in rows] == [v["name"] for v in doc["variants"]]
    assert "5.00" in rows[0].text  # the slower run's wall time
    regressions = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "p.regression")]
    assert any("wall time (wall_s)" in r for r in regressions)
    assert browser.find_elements(By.CSS_SELECTOR, "table.llm tbody tr")
