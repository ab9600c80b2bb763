"""The UI fixes of issue #16 (item 7) in Chromium against a real daemon with the `tests/fixtures/ui` workspace.

Pinned here: the run dialog checks each value against the signal's JSON Schema at the field (bounds, whole numbers,
JSON kinds) before anything is sent, and a field's error goes away as soon as the field is edited; at 390 px the
runs table scrolls sideways inside its box with a visible cue while the page itself does not overflow; the
Schedules page lists the cron schedules with their next run and pauses, resumes and runs one now through the API;
the runs list's time range filter narrows the list with `since`/`until` on GET /api/sessions.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Request, expect

from tests.browser import CHROMIUM, new_context, ui_daemon
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_ui import open_dialog, shot, trigger, view_of, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from ui_daemon(tmp_path_factory, "atlas-ui-fixes", [FIXTURES / "ui"])



@pytest.fixture
async def context(browser: Browser, ui: DaemonProcess) -> AsyncIterator[BrowserContext]:
    # UTC, so that the datetime-local inputs of the time filter read like the API's timestamps.
    ctx, errors = await new_context(browser, ui.url, timezone_id="UTC")
    yield ctx
    await ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def posts_to(requests: list[Request]) -> list[str]:
    return [r.url for r in requests if r.method == "POST"]


async def test_the_run_dialog_checks_the_schema_inline_and_clears_an_error_when_its_field_changes(
        page: Page, client: httpx.AsyncClient) -> None:
    sent: list[Request] = []
    page.on("request", lambda r: sent.append(r))
    dialog = await open_dialog(page, "Deploy a service")
    await dialog.get_by_role("textbox", name="Service").fill("web")
    replicas = dialog.get_by_role("spinbutton", name="Replicas")
    replicas_error = dialog.locator("[data-field=replicas] .field-error")

    # Leaving a changed field checks it against the schema (maximum: 10) at once.
    await replicas.fill("20")
    await replicas.press("Tab")
    await expect(replicas_error).to_have_text('Field "Replicas" must be at most 10')
    await expect(replicas).to_have_attribute("aria-invalid", "true")
    await shot(page, "fixes-01-inline-error", full_page=False)
    # Editing the field clears its error while typing (before it is left).
    await replicas.press("Backspace")
    await expect(replicas_error).to_be_hidden()
    await expect(replicas).not_to_have_attribute("aria-invalid", "true")

    await replicas.fill("2.5")  # integer
    await replicas.press("Tab")
    await expect(replicas_error).to_have_text('Field "Replicas" must be a whole number')
    ratio = dialog.get_by_role("spinbutton", name="ratio")
    await ratio.fill("-1")  # minimum: 0
    labels = dialog.get_by_role("textbox", name="labels")
    await labels.fill('["not", "an", "object"]')
    # Start run checks every field too, and sends nothing while one is wrong.
    await dialog.get_by_role("button", name="Start run").click()
    await expect(dialog.locator("[data-field=ratio] .field-error")).to_have_text('Field "ratio" must be at least 0')
    await expect(dialog.locator("[data-field=labels] .field-error")).to_have_text(
        'Field "labels" must be a JSON object')
    await expect(replicas_error).to_have_text('Field "Replicas" must be a whole number')
    await expect(dialog).to_be_visible()
    assert posts_to(sent) == []

    await replicas.fill("3")
    await ratio.fill("0.5")
    await labels.fill('{"team": "infra"}')
    for slot in ("replicas", "ratio", "labels"):
        await expect(dialog.locator(f"[data-field={slot}] .field-error")).to_be_hidden()
    async with page.expect_response(lambda r: r.request.method == "POST" and "/signals/deploy?" in r.url) as answer:
        await dialog.get_by_role("button", name="Start run").click()
    response = await answer.value
    assert response.status == 202, await response.text()
    sid = (await response.json())["sessionId"]
    await expect(page).to_have_url(re.compile(rf"/sessions/{sid}$"))
    view = await wait_status(client, sid, TERMINAL)
    assert view["payload"] == {"service": "web", "replicas": 3, "ratio": 0.5, "labels": {"team": "infra"}}


async def test_a_390_px_runs_table_scrolls_sideways_with_a_cue(browser: Browser, ui: DaemonProcess,
                                                                client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "broken"))["sessionId"]
    await wait_status(client, sid, TERMINAL)
    ctx, errors = await new_context(browser, ui.url, viewport={"width": 390, "height": 844}, is_mobile=True,
                                    has_touch=True)
    page = await ctx.new_page()
    await page.goto("/sessions")
    box = page.get_by_role("region", name="All runs")
    await expect(box.locator("tbody tr").first).to_be_visible()
    await expect(page.locator(".scroll-cue")).to_be_visible()
    await expect(page.locator(".scroll-cue")).to_have_text("Scroll sideways for more columns →")
    await expect(box).to_have_class(re.compile(r"\bis-scrollable\b"))
    sizes = await box.evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert sizes[0] > sizes[1], sizes
    # The box scrolls, not the page: nothing is clipped and the page has no sideways scroll of its own.
    await box.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    assert await box.evaluate("el => el.scrollLeft") > 0
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await expect(box.get_by_role("columnheader", name="Correlation")).to_be_in_viewport()
    await shot(page, "fixes-02-mobile-runs")
    # The workspace page's wide signals table does the same.
    await page.goto("/workspaces/ui")
    signals = page.get_by_role("region", name="Signals table")
    await expect(signals.locator("tbody tr").first).to_be_visible()
    await expect(signals).to_have_class(re.compile(r"\bis-scrollable\b"))
    await expect(signals.locator("xpath=following-sibling::p[contains(@class, 'scroll-cue')]")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    # Wide enough for the whole table: no cue.
    await page.set_viewport_size({"width": 1600, "height": 900})
    await expect(page.locator(".scroll-cue:visible")).to_have_count(0)
    await expect(signals).not_to_have_class(re.compile(r"\bis-scrollable\b"))
    await ctx.close()
    assert not errors, errors


async def test_the_schedules_page_pauses_resumes_and_runs_a_schedule_now(page: Page,
                                                                         client: httpx.AsyncClient) -> None:
    await page.goto("/")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    await expect(page).to_have_url(re.compile(r"/schedules$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Schedules")
    row = page.locator("tr[data-schedule='ui/nightly']")
    await expect(row).to_contain_text("0 3 * * *")
    await expect(row).to_contain_text("Europe/Berlin")
    await expect(row.locator(".badge")).to_have_text("active")
    entry = next(s for s in (await client.get("/api/schedules")).json()["schedules"] if s["signalId"] == "nightly")
    await expect(row.locator(".next-run time")).to_have_attribute("datetime", entry["nextRun"])
    await expect(row.locator(".last-result")).to_have_text("Not run yet")
    await shot(page, "fixes-03-schedules")

    try:
        await row.get_by_role("button", name="Pause ui/nightly").click()
        await expect(row.locator(".badge")).to_have_text("paused")
        await expect(row.locator(".next-run")).to_have_text("paused")
        paused = next(s for s in (await client.get("/api/schedules")).json()["schedules"] if s["signalId"] == "nightly")
        assert paused["paused"] is True and paused["nextRun"] is None
        await row.get_by_role("button", name="Resume ui/nightly").click()
        await expect(row.locator(".badge")).to_have_text("active")
        resumed = next(s for s in (await client.get("/api/schedules")).json()["schedules"]
                       if s["signalId"] == "nightly")
        assert resumed["paused"] is False and resumed["nextRun"]
    finally:
        await client.post("/api/schedules/ui/nightly/resume")

    async with page.expect_response(lambda r: r.request.method == "POST" and "/signals/nightly?" in r.url) as answer:
        await row.get_by_role("button", name="Run ui/nightly now").click()
    response = await answer.value
    assert response.status == 202, await response.text()
    sid = (await response.json())["sessionId"]
    await expect(page).to_have_url(re.compile(rf"/sessions/{sid}$"))
    view = await wait_status(client, sid, TERMINAL)
    assert (view["signalId"], view["jobName"], view["trigger"], view["status"]) == (
        "nightly", "nightly", "ui", "completed")


async def test_a_paused_schedule_action_error_is_shown(page: Page) -> None:
    async def gone(route: Any) -> None:
        await route.fulfill(status=404, content_type="application/json",
                            body='{"error":{"code":"schedule_not_found","message":"No schedule ui/nightly"}}')

    await page.goto("/schedules")
    row = page.locator("tr[data-schedule='ui/nightly']")
    await expect(row.locator(".badge")).to_have_text("active")
    await page.route("**/api/schedules/ui/nightly/pause", gone)
    await row.get_by_role("button", name="Pause ui/nightly").click()
    await expect(page.locator(".inline-msg")).to_contain_text("No schedule ui/nightly (HTTP 404)")
    await expect(row.locator(".badge")).to_have_text("active")


async def test_the_time_range_filter_narrows_the_runs_list(page: Page, client: httpx.AsyncClient) -> None:
    before = (await trigger(client, "broken"))["sessionId"]
    first = await wait_status(client, before, TERMINAL)
    # The inputs take whole seconds: start the second run in a later second than the first one's start.
    boundary = datetime.fromisoformat(first["startedAt"].replace("Z", "+00:00")).replace(microsecond=0).timestamp() + 1
    while time.time() < boundary:  # a wall-clock condition, not a synchronisation: the daemon stamps the runs
        await asyncio.sleep(0.02)
    after = (await trigger(client, "broken"))["sessionId"]
    await wait_status(client, after, TERMINAL)
    cut = datetime.fromtimestamp(boundary, UTC).strftime("%Y-%m-%dT%H:%M:%S")

    await page.goto("/sessions")
    rows = page.locator("table.runs tbody tr")
    await expect(rows.and_(page.locator(f"[data-session-id='{before}']"))).to_have_count(1)
    await expect(rows.and_(page.locator(f"[data-session-id='{after}']"))).to_have_count(1)

    await page.get_by_label("Started", exact=True).select_option("custom")
    lists: list[str] = []
    page.on("request", lambda r: lists.append(r.url) if "/api/sessions?" in r.url else None)
    await page.get_by_label("Started from").fill(cut)
    await expect(rows.and_(page.locator(f"[data-session-id='{before}']"))).to_have_count(0)
    await expect(rows.and_(page.locator(f"[data-session-id='{after}']"))).to_have_count(1)
    assert any("since=" in url for url in lists), lists  # filtered by the daemon, not only in the page
    await expect(page).to_have_url(re.compile(r"range=custom.*since=|since=.*range=custom"))
    await shot(page, "fixes-04-time-filter")

    await page.get_by_label("Started from").fill("")
    await page.get_by_label("Started before").fill(cut)
    await expect(rows.and_(page.locator(f"[data-session-id='{after}']"))).to_have_count(0)
    await expect(rows.and_(page.locator(f"[data-session-id='{before}']"))).to_have_count(1)

    # The filter survives a reload (it lives in the URL) and "Clear filters" lifts it.
    await page.reload()
    # A datetime-local input reports a whole minute without its ":00" seconds, as the browser serialises it.
    shown = cut.removesuffix(":00")
    await expect(page.get_by_label("Started before")).to_have_value(shown)
    await expect(rows.and_(page.locator(f"[data-session-id='{after}']"))).to_have_count(0)
    await page.get_by_role("button", name="Clear filters").click()
    await expect(rows.and_(page.locator(f"[data-session-id='{after}']"))).to_have_count(1)

    # A preset: "Last 15 minutes" keeps both fresh runs.
    await page.get_by_label("Started", exact=True).select_option("15m")
    await expect(rows.and_(page.locator(f"[data-session-id='{before}']"))).to_have_count(1)
    assert (await view_of(client, after))["status"] == "failed"
