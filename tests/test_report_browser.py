"""The HTML report in a real headless Chromium: it loads without console errors, every video has a
positive duration and decodes to its end, and an instruction containing ``<script>`` shows as text.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make setup`` and ``make test``
install them when missing) and ``selenium`` (the ``dev`` extra). Without them these tests fail and
say how to install them; ``EMBODIED_SKIP_BROWSER_TESTS=1`` skips them knowingly.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embodied.cli import main

HOW_TO_INSTALL = ("install them with `apt-get install chromium chromium-driver` (`make setup` does it as root) and "
                  "`pip install -e '.[dev]'` for selenium, or set EMBODIED_SKIP_BROWSER_TESTS=1 to skip the browser tests")
EVIL = "<script>window.__pwned = 1; console.error('pwned')</script> push the red cube"

# For each <video>: wait for its metadata, seek to its end, and report [duration, error code, readyState].
PROBE_VIDEOS = """
const done = arguments[arguments.length - 1];
const videos = Array.from(document.querySelectorAll('video'));
const once = (v, names) => new Promise(ok => names.forEach(n => v.addEventListener(n, ok, {once: true})));
Promise.all(videos.map(async v => {
  if (v.readyState < 1 && !v.error) { await once(v, ['loadedmetadata', 'error']); }
  if (!v.error && isFinite(v.duration) && v.duration > 0) {
    const seeked = once(v, ['seeked', 'error']);
    v.currentTime = Math.max(0, v.duration - 0.01);
    await seeked;
  }
  return [v.duration, v.error ? v.error.code : null, v.readyState];
})).then(done);
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium driven through chromedriver, browser console logs on."""
    if os.environ.get("EMBODIED_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("EMBODIED_SKIP_BROWSER_TESTS=1")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {HOW_TO_INSTALL}")
    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail(f"the report's browser test needs chromium and chromedriver on PATH: {HOW_TO_INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def page_problems(driver: Any, page: Path) -> list[str]:
    """Load ``page`` and list what is wrong: console errors, videos without a positive duration or failing to decode
    to their end, any <script> element or a script that ran."""
    driver.get(page.resolve().as_uri())
    problems = [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    for i, (duration, error, ready) in enumerate(driver.execute_async_script(PROBE_VIDEOS)):
        if error is not None or not (duration and 0 < duration < float("inf")):
            problems.append(f"video {i}: duration {duration}, error code {error}, readyState {ready}")
    problems += [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if driver.execute_script("return document.querySelectorAll('script').length"):
        problems.append("a <script> element is in the page")
    if driver.execute_script("return window.__pwned !== undefined"):
        problems.append("a script from the data ran")
    return problems


@pytest.fixture(scope="module")
def evil_report(report_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the tiny run and its evaluation, the filmed episode's instruction replaced by :data:`EVIL`."""
    tmp = tmp_path_factory.mktemp("browser")
    data = json.loads((report_inputs / "eval-seen" / "eval.json").read_text())
    data["rows"][0]["videos"][0]["instruction"] = EVIL
    (tmp / "eval").mkdir()
    (tmp / "eval" / "eval.json").write_text(json.dumps(data))
    out = tmp / "report.html"
    assert main(["report", str(report_inputs / "run"), str(tmp / "eval"), "--out", str(out)]) == 0
    return out


def test_report_loads_clean_plays_its_videos_and_shows_script_as_text(chromium, evil_report):
    assert page_problems(chromium, evil_report) == []
    assert chromium.title == "embodied report"
    assert len(chromium.find_elements("tag name", "video")) == 1
    captions = [c.text for c in chromium.find_elements("tag name", "figcaption")]
    assert any(EVIL in c for c in captions), captions
    assert len(chromium.find_elements("css selector", "table.families tr")) >= 2


def test_the_browser_check_catches_a_broken_video_and_an_executed_script(chromium, evil_report, tmp_path):
    text = evil_report.read_text()
    unescaped = text.replace(html.escape(EVIL, quote=True), EVIL)
    assert unescaped != text
    (tmp_path / "script.html").write_text(unescaped)
    problems = page_problems(chromium, tmp_path / "script.html")
    assert "a <script> element is in the page" in problems and "a script from the data ran" in problems
    assert any("pwned" in p for p in problems)  # its console.error

    def cut(m: re.Match[str]) -> str:  # keep the first third of the MP4, still valid base64
        data = m.group(1)
        return f"data:video/mp4;base64,{data[: len(data) // 12 * 4]}\""

    broken = re.sub(r'data:video/mp4;base64,([A-Za-z0-9+/=]+)"', cut, text)
    assert broken != text
    (tmp_path / "video.html").write_text(broken)
    assert [p for p in page_problems(chromium, tmp_path / "video.html") if p.startswith("video 0")]
