"""The run page's timeline, event history and actions (issue #16, items 6 and 7), in Chromium against a real daemon.

Pinned here: the Gantt strip has a queue-wait bar (queuedAt → startedAt) and one bar per step whose start and end
are the recorded ones (startedAt, startedAt + durationMs), with the times written out; the Event history tab lists
every durable event of the session (seq, type, raw JSON), and "Load all" fetches them when the page only polled;
Cancel asks first ("Keep running" sends nothing) and a step cut short by the cancel shows `cancelled`, not a red
`failed` (the API keeps `failed` + `cancelled_by_user`); "● Live" shows while the stream is open, also after a
reconnect; with the daemon gone the page says so and disables Cancel and Re-run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from tests.browser import ui_daemon
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_ui import CHROMIUM, shot, trigger, view_of, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from ui_daemon(tmp_path_factory, "atlas-ui-timeline", [FIXTURES / "ui"])





def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


async def test_the_strip_has_a_queue_wait_bar_and_each_steps_recorded_start_and_end(
        page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "deploy", {"service": "web", "replicas": 1}))["sessionId"]
    view = await wait_status(client, sid, TERMINAL)
    assert view["status"] == "completed"
    await page.goto(f"/sessions/{sid}")
    await expect(page.locator(".run-status")).to_have_text("completed")

    queue = page.locator(".gantt-row[data-kind=queue]")
    await expect(queue).to_have_count(1)
    await expect(queue).to_contain_text("Queue wait")
    assert await queue.get_attribute("data-start") == view["queuedAt"]
    assert await queue.get_attribute("data-end") == view["startedAt"]

    steps = page.locator(".gantt-row[data-kind=step]")
    blocks = view["agentBlocks"]
    await expect(steps).to_have_count(len(blocks))
    t0 = at(view["queuedAt"])
    span = max(at(b["startedAt"]) + timedelta(milliseconds=b["durationMs"]) for b in blocks) - t0
    for row, block in zip(await steps.all(), blocks, strict=True):
        end = at(block["startedAt"]) + timedelta(milliseconds=block["durationMs"])
        # The bar sits on the shared axis where the step ran: its offset and width are the step's share of the run.
        track = await row.locator(".gantt-track").bounding_box()
        bar = await row.locator(".gantt-bar").bounding_box()
        assert track and bar
        assert abs((bar["x"] - track["x"]) / track["width"] - (at(block["startedAt"]) - t0) / span) < 0.02
        assert abs(bar["width"] / track["width"] - max(0.004, (end - at(block["startedAt"])) / span)) < 0.02
        assert await row.get_attribute("data-start") == block["startedAt"]
        assert await row.get_attribute("data-end") == iso(end)
        await expect(row).to_contain_text(f"Step {block['stepNumber']}: {block['agentName']}")
        await expect(row.locator(".badge")).to_have_text("completed")
        # The times are written out (local clock, milliseconds), and the bar has a width on the shared axis.
        local_start = at(block["startedAt"]).astimezone().strftime("%H:%M:%S.") + block["startedAt"][20:23]
        await expect(row.locator(".gantt-times")).to_contain_text(local_start)
    await shot(page, "timeline-01-strip")


async def test_the_event_history_lists_every_durable_event_with_its_raw_json(
        page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "broken"))["sessionId"]
    view = await wait_status(client, sid, TERMINAL)
    await page.goto(f"/sessions/{sid}")
    await expect(page.locator(".run-status")).to_have_text("failed")
    tab = page.get_by_role("tab", name="Event history")
    await tab.click()
    await expect(tab).to_have_attribute("aria-selected", "true")
    rows = page.locator(".event-row")
    await expect(rows).to_have_count(view["lastSeq"])
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == list(range(1, view["lastSeq"] + 1))
    types = await rows.evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert types[0] == "session:queued" and types[-1] == "session:complete"
    assert "step:start" in types and "step:complete" in types
    failed_step = rows.filter(has_text="step:complete")
    await expect(failed_step).to_contain_text("failed")
    await failed_step.locator("summary").click()
    raw = json.loads(await failed_step.locator("pre.event-json").text_content() or "")
    assert raw["type"] == "step:complete" and raw["status"] == "failed" and raw["sessionId"] == sid
    assert raw["stepNumber"] == 1 and raw["seq"] == int(await failed_step.get_attribute("data-seq") or 0)
    await shot(page, "timeline-02-event-history")
    # The Steps tab is still there, one click back.
    await page.get_by_role("tab", name="Steps").click()
    await expect(page.locator("li.block")).to_have_count(1)
    await expect(page.locator(".event-list")).to_be_hidden()


async def test_a_page_that_polled_loads_the_whole_history_on_demand(page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "broken"))["sessionId"]
    view = await wait_status(client, sid, TERMINAL)

    async def no_stream(route: Route) -> None:
        await route.fulfill(status=404, content_type="application/json",
                            body='{"error":{"code":"not_found","message":"No such route"}}')

    await page.route(f"**/api/sessions/{sid}/stream", no_stream)
    await page.goto(f"/sessions/{sid}")
    await expect(page.locator(".run-status")).to_have_text("failed")  # from GET: no event was seen
    await page.get_by_role("tab", name="Event history").click()
    await expect(page.locator(".event-note")).to_contain_text(f"({view['lastSeq']} not received yet)")
    await expect(page.locator(".event-row")).to_have_count(0)
    await page.unroute(f"**/api/sessions/{sid}/stream")
    await page.get_by_role("button", name="Load all").click()
    await expect(page.locator(".event-row")).to_have_count(view["lastSeq"])
    await expect(page.get_by_role("button", name="Load all")).to_be_hidden()


async def test_cancel_asks_first_and_the_cut_step_shows_cancelled(page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "hold"))["sessionId"]
    deletes: list[str] = []

    def on_request(request: Request) -> None:
        if request.method == "DELETE":
            deletes.append(request.url)

    page.on("request", on_request)
    try:
        await page.goto(f"/sessions/{sid}")
        await expect(page.locator("li.block .badge")).to_have_text(["running"])
        cancel = page.get_by_role("button", name="Cancel run")
        await cancel.click()
        confirm = page.get_by_role("alertdialog", name="Cancel this run?")
        await expect(confirm).to_be_visible()
        await expect(confirm.get_by_role("button", name="Keep running")).to_be_focused()
        await shot(page, "timeline-03-cancel-confirm", full_page=False)
        await confirm.get_by_role("button", name="Keep running").click()
        await expect(confirm).to_be_hidden()
        await page.keyboard.press("Escape")  # nothing is open: Escape changes nothing either
        assert deletes == []
        assert (await view_of(client, sid))["status"] == "active"
        await expect(page.locator(".run-status")).to_have_text("active")

        await cancel.click()
        await expect(confirm).to_be_visible()
        async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
            await confirm.get_by_role("button", name="Cancel run").click()
        assert (await deleted.value).status in (200, 202)
        await expect(page.locator(".run-status")).to_have_text("cancelled")
        await expect(page.locator("li.block .badge")).to_have_text(["cancelled"])
        await expect(page.locator(".gantt-row[data-kind=step] .badge")).to_have_text(["cancelled"])
        await expect(page.locator("li.block.block-failed")).to_have_count(0)
        await shot(page, "timeline-04-cancelled")
        view = await view_of(client, sid)
        block = view["agentBlocks"][0]
        assert (block["status"], block["errorCode"]) == ("failed", "cancelled_by_user")  # the record is unchanged
    finally:
        await client.delete(f"/api/sessions/{sid}")


async def test_a_failed_step_of_a_failed_run_still_shows_failed(page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "broken"))["sessionId"]
    await wait_status(client, sid, TERMINAL)
    await page.goto(f"/sessions/{sid}")
    await expect(page.locator("li.block .badge")).to_have_text(["failed"])


async def test_live_shows_while_the_stream_is_open_also_after_a_reconnect(page: Page,
                                                                          client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "hold"))["sessionId"]
    attempts: list[str] = []

    async def first_fails(route: Route) -> None:
        attempts.append(route.request.url)
        if len(attempts) == 1:
            await route.abort("connectionreset")
        else:
            await route.continue_()

    try:
        await wait_status(client, sid, {"active"})
        await page.route(f"**/api/sessions/{sid}/stream", first_fails)
        await page.goto(f"/sessions/{sid}")
        connection = page.locator(".connection")
        await expect(connection).to_have_text("● Live")
        assert len(attempts) == 2  # Live came with the second stream, after the first one failed
        await client.delete(f"/api/sessions/{sid}")
        await expect(page.locator(".run-status")).to_have_text("cancelled")
        await expect(connection).to_have_text("")  # the stream ended with the run
    finally:
        await client.delete(f"/api/sessions/{sid}")


async def test_with_the_daemon_gone_the_page_says_so_and_disables_its_actions(browser: Browser,
                                                                               tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "home", [FIXTURES / "ui"]).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            held = (await trigger(client, "hold"))["sessionId"]
            done = (await trigger(client, "broken"))["sessionId"]
            await wait_status(client, held, {"active"})
            await wait_status(client, done, TERMINAL)
        ctx = await browser.new_context(base_url=proc.url)
        live, finished = await ctx.new_page(), await ctx.new_page()
        await live.goto(f"/sessions/{held}")
        await finished.goto(f"/sessions/{done}")
        await expect(live.locator(".connection")).to_have_text("● Live")
        cancel = live.get_by_role("button", name="Cancel run")
        rerun = finished.get_by_role("button", name="Re-run", exact=True)
        await expect(cancel).to_be_enabled()
        await expect(rerun).to_be_enabled()

        await asyncio.to_thread(proc.kill9)
        for page in (live, finished):
            await expect(page.get_by_role("alert").filter(has_text="The daemon is not reachable")).to_be_visible()
        await expect(cancel).to_be_disabled()
        await expect(rerun).to_be_disabled()
        await expect(live.locator(".connection")).to_have_text("Could not reach the daemon — retrying")
        await expect(live.locator(".run-status")).to_have_text("active")  # as last seen
        await shot(live, "timeline-05-daemon-down")
        await ctx.close()
    finally:
        proc.stop()
