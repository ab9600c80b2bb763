"""The run page says why a run failed (issue #16, item 2): a failed python step's traceback in a `pre` block, a failed
shell step's last stderr lines, and a failed cascade's cause chain, nested, with links to the child runs, both in the
run's error banner and in its failed step. Playwright drives Debian's Chromium (the browser fixture of
tests/test_ui.py) against a real daemon with the `tests/fixtures/forensics` workspace; the page folds the run's
stream with the JS reducer, which must fold `errorDetails` and `cause` exactly like the Python one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from atlas.cli.sse import parse_sse
from atlas.sessions.reducer import build_view
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_forensics import SECRET, STEPS, line_of
from tests.test_ui import CHROMIUM, shot, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def forensics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("ui-forensics"), [FIXTURES / "forensics"],
                      {"FORENSICS_SECRET": SECRET}).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def ui_url(forensics: DaemonProcess) -> str:
    return forensics.url




async def failed_run(client: httpx.AsyncClient, signal: str) -> dict[str, Any]:
    r = await client.post(f"/api/workspaces/forensics/signals/{signal}?nowait=true", json={"payload": {}})
    assert r.status_code == 202, r.text
    view = await wait_status(client, r.json()["sessionId"], TERMINAL)
    assert view["status"] == "failed", view
    return view


async def only_child(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}/children")
    [child] = r.json()["sessions"]
    return dict(child)


async def events_of(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/stream")
    frames = list(parse_sse(r.text.splitlines()))
    return [json.loads(f.data) for f in frames if f.event == "message"]


async def test_the_run_page_shows_a_failed_python_steps_traceback(page: Page, client: httpx.AsyncClient) -> None:
    view = await failed_run(client, "raise")
    await page.goto(f"/sessions/{view['sessionId']}")
    step = page.locator(".timeline .block-failed")
    traceback = step.get_by_label("Traceback (ValueError)")
    await expect(traceback).to_be_visible()
    assert await traceback.evaluate("el => el.tagName") == "PRE"
    await expect(traceback).to_contain_text(f'File "{STEPS}", line {line_of("PARSE_LINE")}, in _parse')
    await expect(traceback).to_contain_text("ValueError: asked to fail: row 3 is bad")
    await shot(page, "forensics-traceback")


async def test_the_run_page_shows_the_cause_chain_with_links_to_the_child_runs(
    page: Page, client: httpx.AsyncClient
) -> None:
    root = await failed_run(client, "grandparent")
    parent = await only_child(client, root["sessionId"])
    child = await only_child(client, parent["sessionId"])
    await page.goto(f"/sessions/{root['sessionId']}")
    for where in (".run-error-slot", ".timeline .block-failed"):  # the run's banner and its failed signal step
        chain = page.locator(where).get_by_role("region", name="Cause chain")
        to_parent = chain.get_by_role("link", name=f"parent {parent['sessionId'][:8]}")
        to_child = chain.get_by_role("link", name=f"disk {child['sessionId'][:8]}")
        await expect(to_parent).to_have_attribute("href", f"/sessions/{parent['sessionId']}")
        await expect(to_child).to_have_attribute("href", f"/sessions/{child['sessionId']}")
        # Nested: the child's level is inside the parent's.
        outer, inner = (f"li[data-session-id='{s['sessionId']}']" for s in (parent, child))
        nested = chain.locator(f"{outer} {inner}")
        await expect(nested).to_have_count(1)
        stderr = nested.get_by_label("Last lines of stderr")
        await expect(stderr).to_contain_text("disk full: /var/data")
    await shot(page, "forensics-cause-chain")
    # The link leads to the child's run, whose failed step shows its own stderr tail.
    await page.locator(".run-error-slot").get_by_role("link", name=f"disk {child['sessionId'][:8]}").click()
    await expect(page).to_have_url(f"/sessions/{child['sessionId']}")
    tail = page.locator(".timeline .block-failed").get_by_label("Last lines of stderr")
    await expect(tail).to_contain_text("disk full: /var/data")


async def test_the_js_reducer_folds_error_details_and_causes_like_the_python_one(
    page: Page, client: httpx.AsyncClient
) -> None:
    root = await failed_run(client, "grandparent")
    raised = await failed_run(client, "raise")
    logs = [await events_of(client, sid) for sid in (root["sessionId"], raised["sessionId"])]
    await page.goto("/")
    got = await page.evaluate("""async (logs) => {
        const R = await import('/assets/js/reducer.js');
        return logs.map((events) => events.reduce((view, event) => R.reduce(view, event), R.initialView()));
    }""", logs)
    for events, view in zip(logs, got, strict=True):
        assert view == json.loads(json.dumps(build_view(events)))
    assert got[0]["cause"]["cause"]["errorDetails"]["stderrTail"].endswith("disk full: /var/data")
    assert "traceback" in got[1]["agentBlocks"][0]["errorDetails"]
