"""The web UI in a real browser (spec §12; §13 items 49–50): Playwright's async API driving Debian's Chromium
against a real daemon started with `tests/fixtures/ui`.

What is pinned here: the daemon serves the UI itself without shadowing the API; the run-job dialog builds its form
from the signal schema, checks required fields before sending, shows API errors inline and never closes on error;
starting a run navigates at once to exactly the session named by the 202 (no list polling, no guessing), and that
page turns queued/active → terminal live, without a reload; two tabs starting the same job land on their own runs;
a run can be cancelled from its page; the runs lists pin live runs, filter through the URL and update live; the
run page reads the SSE stream (and falls back to GET with retries after 1, 2 and 4 s); the JavaScript reducer
folds logs exactly like the Python one. Every page is screenshotted to `test-artifacts/` for a human to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from atlas.sessions.reducer import apply_chunk, initial_view, reduce, summarize
from tests.browser import CHROMIUM, ui_daemon
from tests.daemon_proc import FIXTURES, ROOT, DaemonProcess

ARTIFACTS = ROOT / "test-artifacts"
EMPTY_RUNS = "No runs yet — trigger a signal or click Run on a job."
TOKEN = "ui-test-token-0123456789abcdefghijklmnop"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

expect.set_options(timeout=15_000)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    yield from ui_daemon(tmp_path_factory, "atlas-ui", [FIXTURES / "ui", FIXTURES / "other"])



# ---------------------------------------------------------------------------------------------------- helpers


async def shot(page: Page, name: str, full_page: bool = True) -> None:
    """A screenshot in test-artifacts/ (gitignored) for a human to look at; dialogs are shot as the viewport shows
    them (a modal's backdrop only covers the viewport)."""
    await page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=full_page)


async def trigger(client: httpx.AsyncClient, signal: str, payload: dict[str, Any] | None = None,
                  workspace: str = "ui") -> dict[str, Any]:
    r = await client.post(f"/api/workspaces/{workspace}/signals/{signal}?nowait=true", json={"payload": payload or {}})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def view_of(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}")
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


async def wait_status(client: httpx.AsyncClient, sid: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = await view_of(client, sid)
        if view["status"] in statuses:
            return view
        assert time.monotonic() < deadline, f"session {sid} stayed {view['status']}"
        await asyncio.sleep(0.05)


async def cancel_quietly(client: httpx.AsyncClient, sid: str) -> None:
    await client.delete(f"/api/sessions/{sid}")


def is_trigger_post(signal: str) -> Any:
    return lambda r: r.request.method == "POST" and f"/api/workspaces/ui/signals/{signal}?" in r.url


async def open_dialog(page: Page, job_name: str) -> Any:
    await page.goto("/workspaces/ui")
    await page.get_by_role("button", name=f"Run {job_name}", exact=True).click()
    dialog = page.get_by_role("dialog", name=f"Run {job_name}?")
    await expect(dialog).to_be_visible()
    return dialog


async def fill_deploy(dialog: Any, service: str = "web", replicas: str = "2") -> None:
    if service:
        await dialog.get_by_role("textbox", name="Service").fill(service)
    if replicas:
        await dialog.get_by_role("spinbutton", name="Replicas").fill(replicas)


STATUS_RECORDER = """() => {
  window.__marker = 'no reload';
  window.__statuses = [];
  new MutationObserver(() => {
    const el = document.querySelector('.run-status');
    const text = el && el.textContent;
    if (text && window.__statuses[window.__statuses.length - 1] !== text) window.__statuses.push(text);
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""


# --------------------------------------------------------------------------------- serving (no browser needed)


async def test_ui_is_served_by_the_daemon_without_shadowing_the_api(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/assets/js/main.js">' in root.text
    assert "default-src 'self'" in root.headers["content-security-policy"]
    deep_links = ("/workspaces/ui", "/workspaces/ui/sessions", "/sessions", f"/sessions/{uuid.uuid4()}", "/no/such")
    for deep in deep_links:
        r = await client.get(deep)
        assert r.status_code == 200 and r.text == root.text, deep
    assert (await client.head("/sessions")).status_code == 200
    for api_path in ("/api", "/api/", "/api/no-such-route", "/api/workspaces/ui/nope", "/assets/no-such-file.js"):
        r = await client.get(api_path)
        assert r.status_code == 404, api_path
        assert r.json()["error"]["code"] == "not_found", api_path
    assert (await client.post("/no/such/page")).json()["error"]["code"] in {"not_found", "method_not_allowed"}
    assert (await client.get("/health")).json()["status"] == "ok"
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")
    module = await client.get("/assets/js/main.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert module.headers["cache-control"] == "no-cache" and "etag" in module.headers
    again = await client.get("/assets/js/main.js", headers={"If-None-Match": module.headers["etag"]})
    assert again.status_code == 304


def test_static_files_load_nothing_from_the_internet() -> None:
    static = ROOT / "src" / "atlas" / "ui" / "static"
    files = [p for p in static.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".html", ".js", ".css", ".svg"}
    for path in files:
        text = path.read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert all(u.startswith("http://www.w3.org/2000/svg") for u in urls), (path, urls)


# ---------------------------------------------------------------------------------------------------- pages


async def test_workspaces_page_lists_counts_and_latest_run(page: Page, client: httpx.AsyncClient) -> None:
    body = await trigger(client, "broken")
    await wait_status(client, body["sessionId"], {"failed"})
    await page.goto("/")
    card = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="UI tests"))
    await expect(card).to_contain_text("Deployments and chores driven from the web UI")
    await expect(card).to_contain_text("5 jobs · 6 signals")
    await expect(card.locator(".latest .badge")).to_have_text(re.compile(r"^(queued|active|completed|failed)$"))
    other = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="Other"))
    await expect(other).to_contain_text("No runs yet")
    await shot(page, "01-workspaces")
    await card.get_by_role("link", name="UI tests").click()
    await expect(page).to_have_url(re.compile(r"/workspaces/ui$"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("UI tests")


async def test_workspace_page_shows_jobs_signals_and_schedules(page: Page, client: httpx.AsyncClient) -> None:
    await page.goto("/workspaces/ui")
    jobs = page.locator("li.job-card")
    await expect(jobs).to_have_count(5)
    deploy = jobs.filter(has=page.get_by_role("heading", name="Deploy a service"))
    await expect(deploy).to_contain_text("Rolls a service out, then echoes the result")
    await expect(deploy.locator(".pill-signal")).to_have_text(["Deploy", "Redeploy (from another job)"])
    await expect(deploy.locator("ol.steps li")).to_have_count(2)
    for name in ("Deploy a service", "Hold the line", "Fan out", "Broken job", "Nightly"):
        await expect(page.get_by_role("button", name=f"Run {name}", exact=True)).to_be_enabled()
    nightly = page.locator("table.signals tbody tr").filter(has_text="nightly")
    await expect(nightly).to_contain_text("schedule")
    await expect(nightly).to_contain_text("0 3 * * *")
    await expect(nightly).to_contain_text("Europe/Berlin")
    if (await client.get("/api/schedules")).status_code == 200:
        await expect(nightly).to_contain_text("Next run")
    deploy_sig = page.locator("table.signals tbody tr").filter(has_text="Deploy a service now")
    await expect(deploy_sig).to_contain_text("http")
    await expect(deploy_sig).to_contain_text("/deploy")
    await expect(page.get_by_role("heading", name="Recent runs")).to_be_visible()
    await shot(page, "02-workspace")


async def test_run_dialog_lands_on_the_accepted_run_which_turns_completed_live(page: Page,
                                                                              client: httpx.AsyncClient) -> None:
    """§13 item 49: the 202's sessionId decides the page; it shows queued/active → completed without a reload."""
    dialog = await open_dialog(page, "Deploy a service")
    await page.evaluate(STATUS_RECORDER)
    await expect(dialog.get_by_role("radio")).to_have_count(2)
    await expect(dialog.get_by_role("radio", name="Deploy", exact=True)).to_be_checked()
    # The form follows the schema: text, integer (step 1), boolean, enum, number, JSON.
    await expect(dialog.get_by_role("spinbutton", name="Replicas")).to_have_attribute("step", "1")
    await expect(dialog.get_by_role("spinbutton", name="Replicas")).to_have_attribute("min", "1")
    await expect(dialog.get_by_role("spinbutton", name="ratio")).to_have_attribute("step", "any")
    await expect(dialog.get_by_role("checkbox", name="Canary")).not_to_be_checked()
    await expect(dialog.get_by_role("combobox", name="Region")).to_be_visible()
    await expect(dialog.get_by_role("textbox", name="Service")).to_have_attribute("required", "")
    await expect(dialog.locator("label", has_text="Service")).to_contain_text("*")
    await fill_deploy(dialog, "web", "2")
    await dialog.get_by_role("checkbox", name="Canary").check()
    await dialog.get_by_role("combobox", name="Region").select_option("us-east")
    await dialog.get_by_role("spinbutton", name="ratio").fill("0.25")
    await dialog.get_by_role("textbox", name="labels").fill('{"team": "infra"}')
    await shot(page, "03-run-dialog", full_page=False)

    async def slow(route: Route) -> None:
        await asyncio.sleep(0.6)  # long enough to see the in-flight state
        await route.continue_()

    await page.route(re.compile(r"/api/workspaces/ui/signals/deploy\?nowait=true$"), slow)
    async with page.expect_response(is_trigger_post("deploy")) as answer:
        await dialog.get_by_role("button", name="Start run").click()
        starting = dialog.get_by_role("button", name="Starting…")
        await expect(starting).to_be_disabled()
    response = await answer.value
    assert response.status == 202
    accepted = await response.json()
    request = response.request
    assert request.url.endswith("/api/workspaces/ui/signals/deploy?nowait=true")
    assert json.loads(request.post_data or "") == {"payload": {"service": "web", "replicas": 2, "canary": True,
                                                               "region": "us-east", "ratio": 0.25,
                                                               "labels": {"team": "infra"}}}
    assert (await request.all_headers())["idempotency-key"]

    await expect(page).to_have_url(re.compile(rf"/sessions/{accepted['sessionId']}$"))
    await expect(page.locator("#correlation-id")).to_have_text(accepted["correlationId"])
    await expect(page.locator("#session-id")).to_have_text(accepted["sessionId"])
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Deploy a service")
    await expect(page.locator(".run-status")).to_have_text(re.compile("queued|active"))
    with contextlib.suppress(AssertionError):  # progress chunks are live-only: shoot one if it shows up
        await expect(page.locator("li.block progress")).to_be_visible(timeout=2_000)
    await shot(page, "04-run-active")
    await expect(page.locator(".run-status")).to_have_text("completed", timeout=30_000)
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    await expect(page.locator("li.block")).to_have_count(2)
    await expect(page.locator("li.block .badge")).to_have_text(["completed", "completed"])
    assert await page.evaluate("window.__marker") == "no reload"
    seen = await page.evaluate("window.__statuses")
    assert seen[-1] == "completed" and len(seen) >= 2, seen
    assert seen == [s for s in ("queued", "active", "completed") if s in seen], seen
    await shot(page, "05-run-completed")

    # The copy button is labelled for assistive technology and copies the full id.
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.get_by_role("button", name="Copy correlation id", exact=True).click()
    assert await page.evaluate("navigator.clipboard.readText()") == accepted["correlationId"]
    assert (await view_of(client, accepted["sessionId"]))["correlationId"] == accepted["correlationId"]


async def test_two_tabs_each_land_on_their_own_run(context: BrowserContext) -> None:
    """§13 item 50: two tabs start the same job at the same moment; each follows its own 202."""
    tabs = [await context.new_page(), await context.new_page()]
    dialogs = []
    for i, tab in enumerate(tabs):
        dialog = await open_dialog(tab, "Deploy a service")
        await fill_deploy(dialog, f"tab-{i}", "1")
        dialogs.append(dialog)

    async def start(tab: Page, dialog: Any) -> dict[str, Any]:
        async with tab.expect_response(is_trigger_post("deploy")) as answer:
            await dialog.get_by_role("button", name="Start run").click()
        response = await answer.value
        assert response.status == 202
        body: dict[str, Any] = await response.json()
        return body

    first, second = await asyncio.gather(*(start(t, d) for t, d in zip(tabs, dialogs, strict=True)))
    assert first["sessionId"] != second["sessionId"]
    assert first["correlationId"] != second["correlationId"]
    for tab, body in zip(tabs, (first, second), strict=True):
        await expect(tab).to_have_url(re.compile(rf"/sessions/{body['sessionId']}$"))
        await expect(tab.locator("#correlation-id")).to_have_text(body["correlationId"])
        await expect(tab.locator(".run-status")).to_have_text("completed", timeout=30_000)
    await shot(tabs[0], "06-two-tabs-first")
    await shot(tabs[1], "06-two-tabs-second")


async def test_required_field_is_checked_before_sending(page: Page) -> None:
    dialog = await open_dialog(page, "Deploy a service")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await fill_deploy(dialog, service="", replicas="3")
    await dialog.get_by_role("button", name="Start run").click()
    service = dialog.get_by_role("textbox", name="Service")
    await expect(dialog.locator("[data-field=service] .field-error")).to_have_text('Field "Service" is required')
    await expect(service).to_have_attribute("aria-invalid", "true")
    await expect(service).to_be_focused()
    await expect(dialog).to_be_visible()
    await shot(page, "07-dialog-required", full_page=False)
    await page.wait_for_timeout(300)
    assert posts == []
    # The error is tied to its field for screen readers.
    described = await service.get_attribute("aria-describedby") or ""
    error_id = await dialog.locator("[data-field=service] .field-error").get_attribute("id")
    assert error_id in described.split()


async def test_api_400_details_are_shown_next_to_the_field(page: Page) -> None:
    dialog = await open_dialog(page, "Deploy a service")
    # The schema's `not` is beyond the dialog's own checks (schema-check.js): only the API knows.
    await fill_deploy(dialog, "reserved", "1")
    async with page.expect_response(is_trigger_post("deploy")) as answer:
        await dialog.get_by_role("button", name="Start run").click()
    response = await answer.value
    assert response.status == 400 and (await response.json())["error"]["code"] == "payload_invalid"
    await expect(dialog.locator("[data-field=service] .field-error")).to_contain_text("should not be valid")
    await expect(dialog.get_by_role("textbox", name="Service")).to_have_attribute("aria-invalid", "true")
    await expect(dialog.get_by_role("alert")).to_contain_text("(HTTP 400)")
    await expect(dialog).to_be_visible()
    start = dialog.get_by_role("button", name="Start run")
    await expect(start).to_be_enabled()
    await shot(page, "08-dialog-api-400", full_page=False)
    # Fixing the field clears its error at once (issue #16), and retrying with the same Idempotency-Key works: a
    # refused request reserved nothing.
    await dialog.get_by_role("textbox", name="Service").fill("web")
    await expect(dialog.locator("[data-field=service] .field-error")).to_be_hidden()
    async with page.expect_response(is_trigger_post("deploy")) as answer:
        await start.click()
    assert (await answer.value).status == 202
    await expect(page).to_have_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))


async def test_other_api_errors_and_network_failures_show_at_the_top(page: Page) -> None:
    dialog = await open_dialog(page, "Hold the line")
    await expect(dialog).to_contain_text("This will trigger the job immediately.")
    keys: list[str] = []
    answers = [
        (404, {"error": {"code": "signal_not_found", "message": "Signal 'hold' not found in workspace 'ui'"}}),
        (409, {"error": {"code": "idempotency_key_in_progress", "message": "A request with this key is in flight"}}),
    ]

    async def fake(route: Route) -> None:
        keys.append((await route.request.all_headers())["idempotency-key"])
        if not answers:
            await route.abort("connectionrefused")
            return
        status, body = answers.pop(0)
        await route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    await page.route(re.compile(r"/api/workspaces/ui/signals/hold\?nowait=true$"), fake)
    start = dialog.get_by_role("button", name="Start run")
    alert = dialog.get_by_role("alert")
    await start.click()
    await expect(alert).to_contain_text("Signal 'hold' not found in workspace 'ui' (HTTP 404)")
    await start.click()
    await expect(alert).to_contain_text("A request with this key is in flight (HTTP 409)")
    await start.click()
    await expect(alert).to_have_text("Could not reach the daemon")
    await expect(dialog).to_be_visible()
    await shot(page, "09-dialog-network-error", full_page=False)
    assert len(keys) == 3 and len(set(keys)) == 1  # one key, minted when the dialog opened
    # Keyboard: Escape closes the dialog and gives the focus back to its Run button.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Run Hold the line")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog", name="Run Hold the line?")).to_be_visible()
    await expect(page.get_by_role("dialog").get_by_role("button", name="Start run")).to_be_focused()


async def test_cancel_a_running_job_from_its_page(page: Page, client: httpx.AsyncClient) -> None:
    dialog = await open_dialog(page, "Hold the line")
    async with page.expect_response(is_trigger_post("hold")) as answer:
        await dialog.get_by_role("button", name="Start run").click()
    accepted = await (await answer.value).json()
    await expect(page).to_have_url(re.compile(rf"/sessions/{accepted['sessionId']}$"))
    await expect(page.locator(".run-status")).to_have_text("active")
    await expect(page.locator("li.block .badge")).to_have_text(["running"])
    cancel = page.get_by_role("button", name="Cancel run").first
    await cancel.click()
    confirm = page.get_by_role("alertdialog", name="Cancel this run?")  # asks first (issue #16)
    async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        await confirm.get_by_role("button", name="Cancel run").click()
    assert (await deleted.value).status in (200, 202)
    await expect(page.locator(".run-status")).to_have_text("cancelled")
    await expect(cancel).to_be_hidden()
    await expect(page.locator("li.block .badge")).to_have_text(["cancelled"])  # not a red `failed` (issue #16)
    await expect(page.locator(".run-error-slot")).to_contain_text("cancelled_by_user")
    await shot(page, "10-run-cancelled")
    view = await view_of(client, accepted["sessionId"])
    assert view["status"] == "cancelled" and view["errorCode"] == "cancelled_by_user"


async def test_runs_lists_pin_filter_copy_and_update_live(page: Page, client: httpx.AsyncClient) -> None:
    held = await trigger(client, "hold")
    failed = await trigger(client, "broken")
    try:
        await wait_status(client, held["sessionId"], {"active"})
        await wait_status(client, failed["sessionId"], {"failed"})
        await page.goto("/workspaces/ui/sessions")
        await page.evaluate("window.__marker = 'no reload'")
        rows = page.locator("table.runs tbody tr")
        await expect(rows.filter(has_text=held["correlationId"][:8])).to_have_count(1)
        statuses = await rows.locator("td:first-child .badge").all_text_contents()
        live = [s in ("queued", "active") for s in statuses]
        assert live[0] and live == sorted(live, reverse=True), statuses  # live runs pinned first
        await shot(page, "11-runs-workspace")

        # A run started elsewhere shows up without a reload (2 s polling).
        later = await trigger(client, "broken")
        await expect(rows.filter(has_text=later["correlationId"][:8])).to_have_count(1, timeout=10_000)
        assert await page.evaluate("window.__marker") == "no reload"

        # Filters live in the URL.
        await page.get_by_label("Status").select_option("failed")
        await expect(page).to_have_url(re.compile(r"\?status=failed$"))
        await expect(rows.filter(has_text=held["correlationId"][:8])).to_have_count(0)
        for text in await rows.locator("td:first-child .badge").all_text_contents():
            assert text == "failed"
        await page.get_by_role("button", name="Clear filters").click()
        await page.get_by_label("Correlation or session id").fill(held["correlationId"])
        await expect(page).to_have_url(re.compile(rf"\?q={held['correlationId']}$"))
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("Hold the line")
        await page.get_by_role("button", name="Clear filters").click()
        await page.get_by_label("Job").select_option("nightly")
        await expect(page).to_have_url(re.compile(r"\?job=nightly$"))
        await expect(page.get_by_text("No runs match these filters.")).to_be_visible()

        # Reloading keeps the filters; the short correlationId is copyable.
        await page.goto(f"/workspaces/ui/sessions?trigger=http&q={failed['sessionId']}")
        await expect(page.get_by_label("Trigger")).to_have_value("http")
        await expect(rows).to_have_count(1)
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await page.get_by_role("button", name=f"Copy correlation id {failed['correlationId'][:8]}").click()
        assert await page.evaluate("navigator.clipboard.readText()") == failed["correlationId"]

        # The global list adds the workspace column; a workspace without runs shows the empty state.
        await page.goto("/sessions")
        await expect(page.get_by_role("columnheader", name="Workspace")).to_be_visible()
        await expect(rows.filter(has_text=held["correlationId"][:8])).to_have_count(1)
        await shot(page, "12-runs-global")
        await page.goto("/workspaces/other/sessions")
        await expect(page.get_by_text(EMPTY_RUNS)).to_be_visible()
        await shot(page, "13-runs-empty")
    finally:
        await cancel_quietly(client, held["sessionId"])


async def test_run_page_shows_lineage_and_the_correlation_tree(page: Page, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/workspaces/ui/signals/fanout", json={})
    assert r.status_code == 200, r.text
    parent = r.json()
    child = (await client.get(f"/api/sessions/{parent['sessionId']}/children")).json()["sessions"][0]
    await page.goto(f"/sessions/{parent['sessionId']}")
    lineage = page.locator(".lineage")
    await expect(lineage).to_contain_text("Root run (no parent)")
    await expect(lineage.locator(".children a")).to_have_text("Deploy a service")
    await expect(lineage.locator(".tree").first).to_contain_text("Fan out (this run)")
    await expect(page.locator("li.block")).to_contain_text("Child run")
    await shot(page, "14-run-parent")
    await lineage.locator(".children a").click()
    await expect(page).to_have_url(re.compile(rf"/sessions/{child['sessionId']}$"))
    await expect(page.locator(".lineage")).to_contain_text("Parent: Fan out")
    await expect(page.locator("#correlation-id")).to_have_text(parent["correlationId"])
    await expect(page.locator(".meta-grid .tag-cascade")).to_have_text("cascade")
    await shot(page, "15-run-child")
    await page.get_by_role("link", name="All runs with this id").click()
    await expect(page).to_have_url(re.compile(rf"/sessions\?q={parent['correlationId']}$"))
    await expect(page.locator("table.runs tbody tr")).to_have_count(2)


# ------------------------------------------------------------------------------------ the live stream of a run

T0 = "2026-11-24T10:15:02.123Z"


def _synthetic_log(sid: str, cid: str) -> list[tuple[str, dict[str, Any]]]:
    """A finished two-step session as the stream would send it: durable events and one ephemeral chunk."""
    plan = [{"agentName": "counter", "stateId": "step_0_counter", "task": "Rolls out", "actionType": "agent",
             "outputKey": "counter"},
            {"agentName": "atlas/echo", "stateId": "step_1_atlas/echo", "task": "atlas/echo", "actionType": "agent",
             "outputKey": "atlas/echo"}]
    common = {"sessionId": sid}
    lineage = {"workspaceId": "ui", "jobName": "deploy", "signalId": "deploy", "task": "deploy",
               "correlationId": cid, "rootSessionId": sid, "depth": 0, "plannedSteps": plan}
    return [
        ("event", {**common, "type": "session:queued", "seq": 1, "timestamp": T0, **lineage, "trigger": "http",
                   "payload": {"service": "streamed", "replicas": 1}}),
        ("event", {**common, "type": "session:start", "seq": 2, "timestamp": "2026-11-24T10:15:02.200Z", **lineage}),
        ("event", {**common, "type": "step:start", "seq": 3, "timestamp": "2026-11-24T10:15:02.210Z",
                   "stepNumber": 1, "agentName": "counter", "stateId": "step_0_counter", "actionType": "agent",
                   "task": "Rolls out", "outputKey": "counter", "input": {"service": "streamed"}}),
        ("ephemeral", {**common, "stepNumber": 1,
                       "chunk": {"type": "progress", "current": 1, "total": 3, "message": "1/3"}}),
        ("event", {**common, "type": "step:complete", "seq": 4, "timestamp": "2026-11-24T10:15:03.410Z",
                   "stepNumber": 1, "status": "completed", "durationMs": 1200, "toolCalls": [],
                   "output": {"counted": 3}}),
        ("event", {**common, "type": "step:start", "seq": 5, "timestamp": "2026-11-24T10:15:03.420Z",
                   "stepNumber": 2, "agentName": "atlas/echo", "actionType": "agent", "task": "atlas/echo",
                   "outputKey": "atlas/echo"}),
        ("event", {**common, "type": "step:complete", "seq": 6, "timestamp": "2026-11-24T10:15:03.430Z",
                   "stepNumber": 2, "status": "failed", "durationMs": 10, "toolCalls": [],
                   "error": "echo refused the input", "errorCode": "agent_error"}),
        ("event", {**common, "type": "session:complete", "seq": 7, "timestamp": "2026-11-24T10:15:03.440Z",
                   "status": "failed", "durationMs": 1240, "error": "echo refused the input",
                   "errorCode": "agent_error"}),
    ]


def _sse_body(log: list[tuple[str, dict[str, Any]]]) -> str:
    frames = [": keep-alive\n\n"]
    for kind, item in log:
        if kind == "event":
            frames.append(f"id: {item['seq']}\ndata: {json.dumps(item)}\n\n")
        else:
            frames.append(f"event: ephemeral\r\ndata: {json.dumps(item)}\r\n\r\n")  # CRLF is valid SSE too
    frames.append('event: end\ndata: {"status":"failed"}\n\n')
    return "".join(frames)


async def test_run_page_folds_the_sse_stream(page: Page) -> None:
    """The run page reads `/api/sessions/<sid>/stream` (fetch streaming) and folds it with the JS reducer; while the
    stream works it never polls GET /api/sessions/<sid>."""
    sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    gets: list[str] = []

    async def stream(route: Route) -> None:
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                            body=_sse_body(_synthetic_log(sid, cid)))

    async def view(route: Route) -> None:
        gets.append(route.request.url)
        await route.fulfill(status=500, content_type="application/json",
                            body='{"error":{"code":"internal_error","message":"not expected"}}')

    async def empty_list(route: Route) -> None:
        await route.fulfill(status=200, content_type="application/json", body='{"sessions":[]}')

    await page.route(f"**/api/sessions/{sid}/stream", stream)
    await page.route(f"**/api/sessions/{sid}", view)
    await page.route(f"**/api/sessions/{sid}/children", empty_list)
    await page.route(re.compile(r"/api/sessions\?correlationId="), empty_list)
    await page.goto(f"/sessions/{sid}")
    await expect(page.locator(".run-status")).to_have_text("failed")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Deploy a service")
    await expect(page.locator("#correlation-id")).to_have_text(cid)
    await expect(page.locator("li.block .badge")).to_have_text(["completed", "failed"])
    await expect(page.locator("li.block").nth(1)).to_contain_text("echo refused the input")
    await expect(page.locator(".run-error-slot")).to_contain_text("agent_error")
    await expect(page.locator(".payload-slot")).to_contain_text('"service": "streamed"')
    await expect(page.locator("li.block").first.locator(".block-duration")).to_have_text("1.2 s")
    await shot(page, "16-run-from-stream")
    assert gets == []


async def test_a_failing_stream_falls_back_to_get_and_retries_after_1_2_4_s(page: Page,
                                                                           client: httpx.AsyncClient) -> None:
    held = await trigger(client, "hold")
    attempts: list[float] = []

    async def broken(route: Route) -> None:
        attempts.append(time.monotonic())
        await route.abort("connectionreset")

    try:
        await wait_status(client, held["sessionId"], {"active"})
        await page.route(f"**/api/sessions/{held['sessionId']}/stream", broken)
        await page.goto(f"/sessions/{held['sessionId']}")
        await expect(page.locator(".run-status")).to_have_text("active")  # from the GET fallback
        deadline = time.monotonic() + 10
        while len(attempts) < 3:
            assert time.monotonic() < deadline, attempts
            await asyncio.sleep(0.1)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert 0.8 <= gaps[0] < 2.0 and 1.8 <= gaps[1] < 3.5, gaps
        await client.delete(f"/api/sessions/{held['sessionId']}")
        await expect(page.locator(".run-status")).to_have_text("cancelled", timeout=15_000)
    finally:
        await cancel_quietly(client, held["sessionId"])


async def test_a_daemon_without_the_stream_route_is_polled_every_500_ms(page: Page,
                                                                        client: httpx.AsyncClient) -> None:
    held = await trigger(client, "hold")
    sid = held["sessionId"]
    gets: list[float] = []

    async def no_route(route: Route) -> None:
        await route.fulfill(status=404, content_type="application/json",
                            body='{"error":{"code":"not_found","message":"No such route"}}')

    async def count(route: Route) -> None:
        gets.append(time.monotonic())
        await route.continue_()

    try:
        await page.route(f"**/api/sessions/{sid}/stream", no_route)
        await page.route(f"**/api/sessions/{sid}", count)
        await page.goto(f"/sessions/{sid}")
        await expect(page.locator("#correlation-id")).to_have_text(held["correlationId"])
        await expect(page.locator(".run-status")).to_have_text("active")
        deadline = time.monotonic() + 10
        while len(gets) < 4:
            assert time.monotonic() < deadline, gets
            await asyncio.sleep(0.1)
        gaps = [b - a for a, b in itertools.pairwise(gets)]
        assert all(0.4 <= gap < 1.5 for gap in gaps), gaps
        await client.delete(f"/api/sessions/{sid}")
        await expect(page.locator(".run-status")).to_have_text("cancelled")
        settled = len(gets)
        await page.wait_for_timeout(1200)
        assert len(gets) == settled  # polling stops once the run is terminal
    finally:
        await cancel_quietly(client, sid)


async def test_folding_the_real_stream_in_the_browser_equals_the_api_view(page: Page,
                                                                         client: httpx.AsyncClient) -> None:
    """Spec §3.5: folding a finished session's stream in the browser gives GET /api/sessions/:id, bar ephemeral."""
    r = await client.post("/api/workspaces/ui/signals/fanout", json={})
    assert r.status_code == 200, r.text
    parent = r.json()["sessionId"]
    child = (await client.get(f"/api/sessions/{parent}/children")).json()["sessions"][0]["sessionId"]
    probe = await client.get(f"/api/sessions/{parent}/stream", headers={"Accept": "text/event-stream"})
    if probe.status_code == 404 and probe.json()["error"]["code"] == "not_found":
        pytest.skip("this daemon has no /api/sessions/{id}/stream route yet")
    await page.goto("/")
    for sid in (parent, child):
        folded, served = await page.evaluate("""async (sid) => {
            const { readEventStream } = await import('/assets/js/api.js');
            const R = await import('/assets/js/reducer.js');
            let view = R.initialView();
            await readEventStream(`/api/sessions/${sid}/stream`, { onFrame: ({ event, data }) => {
              if (event === 'message') view = R.reduce(view, JSON.parse(data));
            } });
            const served = await (await fetch(`/api/sessions/${sid}`)).json();
            return [view, served];
        }""", sid)

        def strip(view: dict[str, Any]) -> dict[str, Any]:
            return {**view, "agentBlocks": [{k: v for k, v in b.items() if k != "ephemeral"}
                                            for b in view["agentBlocks"]]}

        assert strip(folded) == strip(served)


# ------------------------------------------------------------------------------ the JS reducer is the Python one


def _random_ops(rng: random.Random) -> list[list[Any]]:
    """A plausible session log, then shuffled a little, duplicated, salted with malformed events and chunks."""
    sid = "7f0c2a51-8d7e-4f43-9a51-0b8f6c1de2aa"
    names = [rng.choice(["a", "b", "c"]) for _ in range(rng.randint(0, 4))]
    plan = [{"agentName": n, "stateId": f"step_{i}_{n}", "task": f"task {i}", "actionType": "agent",
             "outputKey": f"out_{n}"} for i, n in enumerate(names)]
    stamp = iter(f"2026-11-24T10:15:{i // 1000:02d}.{i % 1000:03d}Z" for i in range(0, 59_000, rng.randint(3, 400)))
    ops: list[list[Any]] = []
    seq = 0

    def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        seq += 1
        ops.append(["event", {"type": kind, "sessionId": sid, "seq": seq, "timestamp": next(stamp), **fields}])

    lineage: dict[str, Any] = {"workspaceId": "ui", "jobName": "deploy", "signalId": "deploy", "task": "deploy",
                               "correlationId": "3b9e4c1a-5f6d-4e2b-8a7c-9d0e1f2a3b4c", "rootSessionId": sid,
                               "depth": rng.choice([0, 1])}
    if rng.random() < 0.4:
        lineage["parentSessionId"] = rng.choice(["", None, "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"])
    event("session:queued", **lineage, trigger="http", plannedSteps=plan, payload=rng.choice([{}, {"n": 1}, None]))
    if rng.random() < 0.9:
        event("session:start", **lineage, plannedSteps=plan if rng.random() < 0.8 else None)
        step = 0
        for block in plan:
            if rng.random() < 0.15:
                event("step:skipped", stateId=block["stateId"], agentName=rng.choice([block["agentName"], None]))
                continue
            step += 1
            event("step:start", stepNumber=step, agentName=rng.choice([block["agentName"]] * 4 + ["zzz"]),
                  actionType="agent", task=block["task"], outputKey=block["outputKey"], input={"i": step})
            for _ in range(rng.randint(0, 3)):
                ops.append(["chunk", {"sessionId": sid, "stepNumber": rng.choice([step, step + 5, None]),
                                      "chunk": rng.choice([{"type": "progress", "current": 1, "total": 2},
                                                           {"type": "log", "stream": "stdout", "line": "x"},
                                                           {"type": "text-delta", "delta": "t"},
                                                           {"type": "bogus"}])}])
            status = rng.choice(["completed", "completed", "failed", "weird"])
            extra = {"error": "boom", "errorCode": "agent_error"} if status == "failed" else {}
            if rng.random() < 0.1:
                event("step:complete", stepNumber=step + 7, status="completed", durationMs=3, toolCalls=[])
            if rng.random() < 0.9:
                event("step:complete", stepNumber=step, status=status, durationMs=rng.randint(0, 999),
                      toolCalls=[], output=rng.choice([{"v": step}, None, 0, "text"]), **extra)
        if rng.random() < 0.3:
            event("session:summary", summary="done", keyDetails=[{"label": "n", "value": step}])
        final = rng.choice(["completed", "failed", "cancelled", "interrupted", "skipped", "active"])
        fields: dict[str, Any] = {"status": final}
        if rng.random() < 0.5:
            fields["durationMs"] = rng.randint(0, 5000)
        if final != "completed":
            fields.update(error="stopped", errorCode="cancelled_by_user")
        event("session:complete", **fields)
        if rng.random() < 0.3:
            event("session:summary", summary="late", keyDetails=[])
    # Perturbations: re-deliveries, a swap, malformed and unknown events, stale and after-the-end events.
    for _ in range(rng.randint(0, 4)):
        ops.insert(rng.randint(0, len(ops)), json.loads(json.dumps(rng.choice(ops))))
    if len(ops) > 3 and rng.random() < 0.5:
        i = rng.randint(0, len(ops) - 2)
        ops[i], ops[i + 1] = ops[i + 1], ops[i]
    for _ in range(rng.randint(0, 3)):
        bad = rng.choice([
            {"type": "step:start", "seq": seq + 1},
            {"type": "mystery", "seq": seq + 1},
            {"type": "step:complete", "seq": "9", "stepNumber": 1},
            {"type": "session:complete", "seq": seq + 1, "status": "bogus"},
            {"seq": seq + 1},
            {"type": "step:skipped", "seq": seq + 1},
            {"type": "session:start", "seq": True},
            [1, 2],
            "text",
        ])
        ops.insert(rng.randint(0, len(ops)), ["event", bad])
    return ops


def _fold_python(ops: list[list[Any]]) -> dict[str, Any]:
    view = initial_view()
    for kind, item in ops:
        view = reduce(view, item) if kind == "event" else apply_chunk(view, item)
    return {"view": view, "summary": summarize(view)}


async def test_the_js_reducer_folds_exactly_like_the_python_reducer(page: Page) -> None:
    rng = random.Random(20261124)
    cases = [_random_ops(rng) for _ in range(300)]
    expected = [json.loads(json.dumps(_fold_python(ops))) for ops in cases]
    await page.goto("/")
    got = await page.evaluate("""async (cases) => {
        const R = await import('/assets/js/reducer.js');
        return cases.map((ops) => {
          let view = R.initialView();
          const inputs = JSON.stringify(ops);
          for (const [kind, item] of ops) view = kind === 'event' ? R.reduce(view, item) : R.applyChunk(view, item);
          if (JSON.stringify(ops) !== inputs) throw new Error('the reducer mutated its input');
          return { view, summary: R.summarize(view) };
        });
    }""", cases)
    for ops, want, have in zip(cases, expected, got, strict=True):
        assert have == want, json.dumps(ops)


# ------------------------------------------------------------------------------------ accessibility and tokens


def _luminance(rgb: list[float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(fg: list[float], bg: list[float]) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_text_contrast_is_at_least_4_5(browser: Browser, ui: DaemonProcess, scheme: str) -> None:
    ctx = await browser.new_context(base_url=ui.url, color_scheme=scheme)  # type: ignore[arg-type]
    page = await ctx.new_page()
    await page.goto("/workspaces/ui")
    await expect(page.locator("li.job-card").first).to_be_visible()
    await expect(page.locator("table.runs")).to_be_visible()
    await shot(page, f"18-workspace-{scheme}")
    pairs = await page.evaluate("""async () => {
        const { badge, h } = await import('/assets/js/dom.js');
        const box = h('div', { class: 'card' });
        for (const s of ['queued','active','completed','failed','skipped','cancelled','interrupted','pending',
                         'running','ready']) box.append(badge(s));
        box.append(h('span', { class: 'muted' }, 'muted'), h('a', { href: '#' }, 'link'),
                   h('p', { class: 'field-error' }, 'error'), h('span', { class: 'req' }, '*'));
        document.querySelector('main').append(box,
          h('button', { class: 'primary' }, 'Run'), h('button', { class: 'danger' }, 'Cancel run'),
          h('div', { class: 'banner banner-error' }, 'x'), h('div', { class: 'banner banner-warn' }, 'y'));
        const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
        const bgOf = (el) => {
          for (let e = el; e; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] > 0) return c;
          }
          return [255, 255, 255];
        };
        const els = [...box.children, ...document.querySelectorAll('main > button, main > .banner, body, .topbar a')];
        return els.map((el) => [el.className || el.tagName, rgb(getComputedStyle(el).color), bgOf(el)]);
    }""")
    low = [(name, round(_contrast(fg, bg), 2)) for name, fg, bg in pairs if _contrast(fg, bg) < 4.5]
    await ctx.close()
    assert not low, low


async def test_the_ui_asks_for_the_token_once_and_keeps_it_in_the_tab(browser: Browser,
                                                                    tmp_path: Path) -> None:
    secured = DaemonProcess(tmp_path / "home", [FIXTURES / "ui"], env={"ATLAS_TOKEN": TOKEN}).start()
    try:
        ctx = await browser.new_context(base_url=secured.url)
        page = await ctx.new_page()
        await page.goto("/")
        token_dialog = page.get_by_role("dialog", name="API token required")
        await expect(token_dialog).to_be_visible()
        await shot(page, "17-token-prompt", full_page=False)
        await token_dialog.get_by_label("Token").fill(TOKEN)
        await token_dialog.get_by_role("button", name="Save token").click()
        await expect(page.get_by_role("heading", name="UI tests")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('atlas.token')") == TOKEN
        other = await ctx.new_page()  # a new tab starts without the token; a #token= fragment is read, then removed
        await other.goto(f"/workspaces/ui#token={TOKEN}")
        await expect(other.get_by_role("button", name="Run Deploy a service")).to_be_visible()
        assert "#token" not in other.url
        await ctx.close()
    finally:
        assert secured.stop() == 0, secured.log()
