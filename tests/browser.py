"""Headless Chromium through selenium, with Debian's ``chromium`` and ``chromium-driver`` packages.

Selenium is pointed at the installed browser and driver, so it never tries to download either.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (
    None
    if CHROMIUM and CHROMEDRIVER
    else "chromium and chromium-driver not installed (Debian packages); the report is still checked as "
    "HTML by tests/unit/test_run_report.py"
)


def chromium(width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium that keeps every browser console entry (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, MISSING
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look for a browser online
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def full_page_png(driver: Any, path: str, width: int = 1280) -> None:
    """Save the whole page (not only the window) as a PNG ``width`` pixels wide."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, height)
    inner = int(driver.execute_script("return window.innerHeight"))
    if inner < height:  # the window's frame takes some of its height
        driver.set_window_size(width, height + (height - inner))
    driver.save_screenshot(path)
