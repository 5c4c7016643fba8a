"""Headless Chromium for the page tests (Debian's chromium + chromium-driver; .ci/run installs
them): whether it is there, and a Selenium driver with a throwaway profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
]


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="needs Debian chromium + chromium-driver"
)


def headless_chrome(tmp_path: Path, downloads: Path | None = None):
    """A Chrome driver; with `downloads`, files the page saves land there without a prompt."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs pip selenium")
    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    return driver
