"""The web view in headless Chromium against a real server on loopback: sign in with a token, see a run
appear and finish (its page follows the event stream), see its DAG, nodes and report link, see the
schedules, and be refused another tenant's run. Nothing is loaded from anywhere but the server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import MISSING, chromium
from tests.service_live import GRAPH, LiveService, live_service, wait_status
from tests.service_nodes import HOLD_ENV

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

HELD = GRAPH.replace("name: tiny-graph", "name: held").replace("service_nodes:add_one", "service_nodes:held")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    driver = chromium()
    # a click that submits a form returns before the next page has loaded: look for elements until
    # they are there (up to 10 s) rather than in whichever page happens to be shown
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveService]:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    with live_service(tmp_path) as live:
        yield live


def _until(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page never showed it")


def test_sign_in_see_a_run_appear_and_finish_and_be_refused_another_tenants(
    browser: Any, service: LiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By

    marker = tmp_path / "hold"
    marker.touch()
    monkeypatch.setenv(HOLD_ENV, str(marker))
    owner = service.client(service.owner)
    other = owner.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "b"}).json()["run_id"]
    owner.post(
        "/v1/schedules", json={"name": "hourly", "tenant": "a", "pipeline": GRAPH, "cron": "0 * * * *"}
    )
    browser.delete_all_cookies()
    browser.get(service.url + "/")
    assert browser.current_url.endswith("/signin")  # no anonymous page
    browser.find_element(By.ID, "token").send_keys("hr_000000000000_wrong")
    browser.find_element(By.ID, "signin").click()
    assert "refused: unknown token" in browser.find_element(By.ID, "problem").text

    browser.find_element(By.ID, "token").send_keys(service.token("operator", "a"))
    browser.find_element(By.ID, "signin").click()
    _until(lambda: browser.current_url == service.url + "/")
    assert "no runs" in browser.find_element(By.ID, "runs").text  # tenant b's run is not listed

    mine = owner.post("/v1/runs", json={"pipeline": HELD, "tenant": "a"}).json()["run_id"]
    wait_status(owner, mine, "running")
    # the list reloads itself: the run appears in it
    link = _until(
        lambda: browser.execute_script(
            f"var a = document.querySelector('tr[data-run=\"{mine}\"] a'); return a && a.href"
        )
    )
    browser.get(link)
    assert browser.find_element(By.ID, "status").text == "running"
    marker.unlink()  # the run finishes; the page follows its event stream and shows the end
    shown = "var s = document.getElementById('status'); return s && s.textContent"
    _until(lambda: browser.execute_script(shown) == "succeeded")
    assert [
        b.get_attribute("data-node") for b in browser.find_elements(By.CSS_SELECTOR, "svg.dag g.dag-node")
    ] == ["add"]
    assert "add" in browser.find_element(By.ID, "nodes").text
    assert browser.find_element(By.ID, "report").get_attribute("href").endswith(f"/v1/runs/{mine}/report")
    browser.find_element(By.ID, "report").click()
    _until(lambda: mine in browser.title)  # the report opens with the cookie's token
    browser.back()

    browser.get(f"{service.url}/runs/{other}")
    assert "403" in browser.find_element(By.ID, "problem").text and "'b'" in browser.page_source
    browser.get(f"{service.url}/v1/runs/{other}")
    assert "not one of this token" in browser.page_source

    browser.get(service.url + "/schedules")
    assert "hourly" in browser.find_element(By.ID, "schedules").text
    # no script error; the network errors are the refusals this test asked for (401, 403)
    logged = browser.get_log("browser")
    assert [e for e in logged if e["level"] == "SEVERE" and e["source"] != "network"] == []
    network = [e["message"] for e in logged if e["source"] == "network"]
    assert all(" 401 " in m or " 403 " in m for m in network), network
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert all(name.startswith(service.url) for name in resources)
