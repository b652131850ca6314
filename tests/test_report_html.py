"""The HTML report renders in headless Chromium: no console errors, every image loaded; a screenshot is kept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.engine import run_suite
from bench.report import write_report
from bench.suites import validate_data

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900")


def _ensure_chromium() -> None:
    """Install Debian's chromium + chromium-driver when missing; skip (with the reason) only if that fails."""
    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is unavailable to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env, check=True,
                       capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"could not install chromium/chromium-driver: {exc}")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("apt-get finished but /usr/bin/chromium or /usr/bin/chromedriver is still missing")


@pytest.fixture
def browser(tmp_path):
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_html_report_renders_in_chromium(tiny_suite_data, bench_workspace, fake_stages, browser, tmp_path):
    from test_report_files import report_stages

    suite = validate_data({**tiny_suite_data, "workspace": str(bench_workspace)}, "test")
    run_suite(suite, stage_fns=report_stages(fake_stages), stage_versions={}, progress=False)
    out = write_report(suite, tmp_path / "report")

    browser.get((out / "index.html").as_uri())
    assert browser.title.startswith("t: synthesis benchmark report")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(images) == 3  # rectified-steps plot, per-class bars, sample grid
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, f"image {alt!r} did not load"
    rows = browser.execute_script("return document.querySelectorAll('#results-table tbody tr').length;")
    assert rows == 3
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # notes and captions: Markdown backticks become <code>, never literal
    notes = browser.execute_script("return Array.from(document.querySelectorAll('li, figcaption, p'))"
                                   ".map(e => e.textContent).join('\\n');")
    assert "`" not in notes
    assert browser.execute_script("return document.querySelectorAll('li code').length;") >= 1

    # a phone (390 px): the page does not overflow; the wide tables scroll inside their own box
    browser.set_window_size(390, 900)
    width = browser.execute_script("return window.innerWidth;")
    assert width <= 420
    page = browser.execute_script("return document.documentElement.scrollWidth;")
    assert page <= width, f"the page is {page} px wide at a {width} px window"
    boxes = browser.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => { const b = t.parentElement;"
        " return [t.id || t.className, b.className, getComputedStyle(b).overflowX, b.scrollWidth > b.clientWidth]; });")
    assert boxes and all(cls == "scroll" and ov == "auto" for _, cls, ov, _ in boxes), boxes
    assert any(wide for name, _, _, wide in boxes if name == "results-table")  # it really is wider than the phone
    browser.set_window_size(1200, 900)
    height = browser.execute_script("return document.body.scrollHeight;")
    browser.set_window_size(1200, min(int(height) + 100, 8000))
    shot = tmp_path / "report-screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
