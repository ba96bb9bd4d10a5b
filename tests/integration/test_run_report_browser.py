"""The run report opened in headless Chromium: it renders without a console error and shows the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.records import RunView
from engine.records.report import render_report
from tests.browser import MISSING, chromium
from tests.records_runs import SPLITS, dataflow_run

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    driver = chromium()
    yield driver
    driver.quit()


def _open(driver: Any, tmp_path: Path, html: str) -> list[dict[str, Any]]:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(page.as_uri())
    return driver.get_log("browser")


def test_report_renders_cleanly_and_shows_the_run(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    events = dataflow_run()
    logs = _open(browser, tmp_path, render_report(RunView.of(events)))
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    assert browser.title == "ticket-triage · r-20260101-000000-7f3a"
    assert browser.find_element(By.CSS_SELECTOR, ".status").text == "failed"
    # nothing was loaded from anywhere: the page is one file
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    boxes = browser.find_elements(By.CSS_SELECTOR, "svg.dag g.dag-node")
    assert sorted(b.get_attribute("data-node") for b in boxes) == sorted(
        ["tickets", "normalise", "triage", "output", "by_team", "team_counts"]
    )
    assert all(b.rect["width"] > 50 and b.rect["height"] > 20 for b in boxes)  # drawn, not collapsed
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.bar")
    assert len(bars) == SPLITS and all(bar.rect["width"] > 0 for bar in bars)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2

    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#errors tbody tr")]
    assert len(rows) == 2
    assert "triage" in rows[0] and "configs/examples/ticket-triage.yaml:25:3" in rows[0]
    assert "by_team" in rows[1] and "configs/examples/ticket-triage.yaml:40:9" in rows[1]


def test_hostile_names_stay_text_in_the_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    evil = '<script>alert("x")</script>'
    events = dataflow_run(names={"triage": evil, "by_team": "<img src=x onerror=alert(1)>"})
    logs = _open(browser, tmp_path, render_report(RunView.of(events)))
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    assert browser.execute_script("return document.scripts.length + document.images.length") == 0
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody td:first-child")]
    assert evil in cells and "<img src=x onerror=alert(1)>" in cells
