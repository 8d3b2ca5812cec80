"""`aks-rotator report --html FILE` as a person sees it: rendered by real headless Chromium (Debian's `chromium`
and `chromium-driver`, installed by `make test`), with no external asset, the charts drawn, and the numbers equal to
what the scan and the state table say."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import report
from tests.plugins.azurite import StorageNames
from tests.test_cli_summary import _cli, _env, seed_rows

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1200, 1500


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{missing} not installed: `make browser` (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)  # with the driver path below, Selenium Manager downloads nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def _drawn(element: WebElement) -> bool:
    size = element.size
    return element.is_displayed() and size["width"] > 0 and size["height"] > 0


def _counts(bars: list[WebElement], series: str | None = None) -> int:
    return sum(
        int(b.get_attribute("data-count") or 0) for b in bars if series in (None, b.get_attribute("data-series"))
    )


def test_report_renders_in_chromium_with_the_scans_numbers(
    emulator: EmulatorControl,
    azurite: Azurite,
    storage_names: StorageNames,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    emulator.reset(seeds.generate(clusters=400, subscriptions=6, seed=5))
    env = _env(emulator, azurite, storage_names, LOG_LEVEL="WARNING")
    day = timedelta(days=1)
    rows = seed_rows(
        env,
        [
            ("aks-00001", "succeeded", 2 * day),
            ("aks-00002", "succeeded", 9 * day),
            ("aks-00003", "succeeded", 9 * day),
            ("aks-00004", "failed", 3 * day),  # open: the runbook links to it
            ("aks-00005", "waiting", timedelta(hours=1)),
            ("aks-00006", "succeeded", 45 * day),  # older than the 30-day window
        ],
    )
    scan: dict[str, Any] = json.loads(_cli(env, "scan", "--dry-run", "--json").stdout)
    findings = scan["findings"]

    page = tmp_path / "report.html"
    written = _cli(env, "report", "--html", str(page))
    assert written.returncode == 0, written.stderr
    assert str(page) in written.stdout.replace("\n", "")
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not load anything from outside"

    browser.get(page.as_uri())
    assert browser.title == "AKS credential expiry report"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded == []  # no stylesheet, font, image or script fetched

    def card(metric: str) -> str:
        text: str = browser.find_element(By.CSS_SELECTOR, f'[data-metric="{metric}"] b').text
        return text.replace(",", "")

    actions = scan["actions"]
    assert card("clusters") == "400" and card("subscriptions") == str(scan["subscriptions"])
    assert card("due") == str(scan["due"])
    for action in ("would_queue", "deferred", "report_only", "opted_out", "already_queued"):
        assert card(action) == str(actions.get(action, 0)), action
    assert card("failed") == "1"

    # The 90-day timeline: every bar drawn with a real size; its counts are the scan's credentials in the window.
    ahead = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
    assert ahead and all(_drawn(bar) for bar in ahead)
    in_window = [f for f in findings if f["kind"] != "managed_identity" and f["days_left"] is not None]
    in_window = [f for f in in_window if f["days_left"] <= report.TIMELINE_DAYS]
    assert _counts(ahead) == len(in_window) > 0
    assert _counts(ahead, "opted_out") == sum(1 for f in in_window if f["action"] == "opted_out")
    assert _counts(ahead, "needs_human") >= sum(1 for f in in_window if f["action"] == "report_only")
    groups = browser.find_elements(By.CSS_SELECTOR, "#timeline g.bucket")
    heights = {int(g.get_attribute("data-total") or 0): g.find_elements(By.CSS_SELECTOR, "rect") for g in groups}
    tallest = max(heights)
    drawn = {total: sum(r.size["height"] for r in rects) for total, rects in heights.items()}
    assert max(drawn, key=lambda total: drawn[total]) == tallest  # the biggest week is the tallest bar

    # The last 30 days: 3 succeeded, 1 failed, 1 in progress (the 45-day-old row is outside the window).
    past = browser.find_elements(By.CSS_SELECTOR, "#history rect.bar")
    assert all(_drawn(bar) for bar in past)
    assert (_counts(past, "succeeded"), _counts(past, "failed"), _counts(past, "in_progress")) == (3, 1, 1)

    # Open failures, each with a runbook link to a heading that exists.
    failures = browser.find_elements(By.CSS_SELECTOR, "#failures tr.failure")
    assert len(failures) == 1 and "aks-00004" in failures[0].text and "403" in failures[0].text
    href = failures[0].find_element(By.LINK_TEXT, "runbook").get_attribute("href") or ""
    document, anchor = href.split("#")
    assert document == (ROOT / "docs" / "operations.md").as_uri()
    assert anchor in github_anchors((ROOT / "docs" / "operations.md").read_text())
    assert rows[3].rotation_id[:12] in failures[0].text

    migrate = sum(1 for f in findings if f["advice"] == "migrate to managed identity")
    assert browser.find_element(By.ID, "migration-count").get_attribute("data-count") == str(migrate)

    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000


def test_every_runbook_anchor_the_report_uses_exists() -> None:
    anchors = github_anchors((ROOT / "docs" / "operations.md").read_text())
    used = {report.ANCHOR_FAILED, report.ANCHOR_POISON, report.ANCHOR_OVERDUE, report.ANCHOR_STATUS}
    assert used <= anchors, used - anchors
