"""The web view end to end in headless Chromium (Playwright driving Debian's chromium),
against a real database with real runs: the list, its counts and filters, and each run's
timeline, failure, saga and LLM cost, with a screenshot check that the timeline renders.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing
(``.ci/run`` installs Chromium, so CI runs them)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from .ui_support import EVIL_ID, LLM_COST, decode_png, near, populate, reset_providers, ui_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Bar colours of the page's CSS (--ok, --bad, --comp, --llm, --wait).
GREEN, RED, PURPLE, TEAL, AMBER = (46, 157, 91), (209, 67, 63), (139, 92, 246), (13, 148, 136), (183, 121, 31)

pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright package is missing (pip install -e '.[dev]')"),
]


@pytest.fixture
async def page(client, start_worker, fake_llm, db_url):
    """A Chromium page, and the web view's base URL over the five populated runs."""
    from playwright.async_api import async_playwright

    try:
        runs = await populate(client, start_worker, fake_llm)
    finally:
        reset_providers()
    async with ui_server(db_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page(viewport={"width": 1400, "height": 1000})
            dialogs: list[str] = []
            tab.on("dialog", lambda d: dialogs.append(d.message))  # an alert() would be an XSS
            yield tab, base, runs
            assert dialogs == []
        finally:
            await browser.close()


async def test_list_shows_runs_counts_and_filters(page):
    tab, base, _ = page
    await tab.goto(base + "/")
    assert await tab.locator("#runs tr.run").count() == 5
    assert await tab.locator("#counts a[data-status='']").inner_text() == "all5"
    assert await tab.locator("#counts a[data-status='failed'] b").inner_text() == "2"
    assert await tab.locator("#counts a[data-status='completed'] b").inner_text() == "2"
    assert await tab.locator("#counts a[data-status='running'] b").inner_text() == "1"
    # The markup in an id is text on the page, not an element.
    assert await tab.get_by_text(EVIL_ID).count() == 1
    assert await tab.locator("#runs script, #runs b").count() == 0

    await tab.click("#counts a[data-status='failed']")
    assert await tab.locator("#runs tr.run").count() == 2
    assert set(await tab.locator("#runs tr.run").evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"failed"}

    await tab.goto(base + "/")
    await tab.fill("input[name=where]", 'WorkflowType = "ui_trip" OR WorkflowId STARTS_WITH "summary"')
    await tab.click("button[type=submit]")
    ids = await tab.locator("#runs tr.run td.id").all_inner_texts()
    assert sorted(ids) == ["summary-1", "trip-lisbon"]
    assert await tab.locator("#counts a[data-status='']").inner_text() == "all2"

    await tab.fill("input[name=where]", "amount >")
    await tab.click("button[type=submit]")
    assert "invalid filter" in await tab.locator("#error").inner_text()
    assert await tab.locator("#runs").count() == 0


async def test_run_pages_show_timeline_failure_saga_and_llm(page, tmp_path):
    tab, base, _ = page
    await tab.goto(base + "/")
    await tab.click("text=pipeline-1")
    activities = tab.locator("#timeline .bar-row[data-kind=activity]")
    assert await activities.count() == 2
    flaky = tab.locator("#timeline .bar-row[data-kind=activity]", has_text="flaky_fetch")
    assert await flaky.get_attribute("data-attempts") == "3"
    assert "3 attempts" in await flaky.inner_text()
    assert await tab.locator("#timeline .bar.retried").count() == 1
    assert await tab.locator("#timeline .bar-row[data-kind=timer][data-status=fired]").count() == 1
    assert "FETCHED K1" in await tab.locator("#payloads").inner_text()
    shot = await tab.locator("#timeline").screenshot()
    _check_screenshot(shot, tmp_path / "pipeline-timeline.png", must_have={"green": GREEN, "amber": AMBER})

    await tab.goto(base + f"/runs/{quote(EVIL_ID, safe='')}")
    assert await tab.locator("#workflow-id").inner_text() == EVIL_ID
    failure = await tab.locator("#run-failure").inner_text()
    assert "CardDeclined" in failure or "ActivityError" in failure
    assert "card declined for 42 <img src=x onerror=alert(1)>" in failure
    assert await tab.locator("#timeline .bar-row[data-kind=activity][data-status=failed]").count() == 1

    await tab.goto(base + "/runs/trip-lisbon")
    assert await tab.locator("#timeline .bar-row[data-kind=activity]").count() == 3
    compensations = tab.locator("#timeline .bar-row[data-kind=compensation][data-status=completed]")
    assert await compensations.count() == 2
    assert await tab.locator("#timeline .mark[data-kind=saga]").count() == 3  # started, compensating, ended
    assert "compensated" in await tab.locator(".saga").inner_text()
    assert "SoldOut" in await tab.locator("#run-failure").inner_text() + await tab.locator(".saga").inner_text()
    shot = await tab.locator("#timeline").screenshot()
    _check_screenshot(shot, tmp_path / "saga-timeline.png", must_have={"purple": PURPLE, "red": RED})

    await tab.goto(base + "/runs/summary-1")
    assert await tab.locator("#timeline .bar-row[data-kind=llm]").count() == 1
    totals = await tab.locator("#llm-totals").inner_text()
    assert "1000 input tokens (400 cached)" in totals
    assert "50 output tokens" in totals
    assert LLM_COST in totals
    assert "deepseek-chat" in await tab.locator("#timeline").inner_text()

    await tab.goto(base + "/runs/waiting-1")
    assert await tab.locator("#timeline .bar-row[data-kind=timer][data-status=waiting]").count() == 1
    assert await tab.locator("#timeline .mark[data-kind=signal]").count() == 1
    assert await tab.locator("#timers tr").count() == 2  # header + the pending timer
    assert re.search(r"running", await tab.locator(".kv").inner_text())
    await _assert_notes_clear_of_labels(tab)
    await tab.goto(base + "/runs/pipeline-1")
    await _assert_notes_clear_of_labels(tab)


async def _assert_notes_clear_of_labels(tab) -> None:
    """As drawn: every bar's note lies right of its row's label, and the axis labels differ."""
    edges = await tab.locator("#timeline .bar-row").evaluate_all(
        "rows => rows.map(r => [r.querySelector('.tl-label').getBoundingClientRect().right,"
        " r.querySelector('.note').getBoundingClientRect().left])")
    assert edges
    for label_right, note_left in edges:
        assert note_left >= label_right - 0.5, f"a note covers the row labels: {edges}"
    axis = await tab.locator("#timeline .tl-axis span").all_inner_texts()
    assert len(set(axis)) == len(axis) == 5


def _check_screenshot(png: bytes, path: Path, *, must_have: dict[str, tuple[int, int, int]]) -> None:
    """The timeline's PNG is not blank: enough non-background pixels, and the bar colours."""
    path.write_bytes(png)
    if os.environ.get("CAIRN_UI_SCREENSHOTS"):  # keep a copy to look at
        Path(os.environ["CAIRN_UI_SCREENSHOTS"], path.name).write_bytes(png)
    width, height, pixels = decode_png(png)
    assert width > 600
    assert height > 60
    drawn = [p for p in pixels if not near(p, (255, 255, 255), 12)]
    assert len(drawn) > 0.03 * len(pixels), f"the timeline looks blank ({len(drawn)} of {len(pixels)} pixels drawn)"
    for name, rgb in must_have.items():
        hits = sum(1 for p in drawn if near(p, rgb, 30))
        assert hits > 100, f"no {name} bars in the timeline ({hits} pixels)"
