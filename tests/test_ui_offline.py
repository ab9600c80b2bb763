"""With the daemon down every page says so and disables its actions (issue #16, item 7), in Chromium.

The run page was the first to do it (tests/test_ui_timeline.py); the runs list, the workspace page, the schedules
page and the chat page share its code (js/online.js). Pinned here: with a real daemon stopped, each page shows the
"not reachable" banner and disables the buttons that need the daemon (Run, Pause, Run now, Send); with a daemon
started again on the same port the banner goes, the buttons are enabled again and the data is reloaded (a run
triggered while the page was down shows up without a reload).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.browser import new_context
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_ui import CHROMIUM, shot, trigger, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}
# The list pages poll every 2-5 s: the banner comes (and goes) at their next poll.
POLLED = 20_000


def banner(page: Page) -> Locator:
    return page.get_by_role("alert").filter(has_text="The daemon is not reachable")


async def test_every_page_says_the_daemon_is_gone_and_disables_its_actions_until_it_is_back(
        browser: Browser, tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "home", [FIXTURES / "ui", FIXTURES / "chat"]).start()
    port = urlsplit(proc.url).port
    assert port is not None
    ctx, errors = await new_context(browser, proc.url)
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            first = (await trigger(client, "broken"))["sessionId"]
            await wait_status(client, first, TERMINAL)
        runs, workspace, schedules, chat = [await ctx.new_page() for _ in range(4)]
        await runs.goto("/sessions")
        await workspace.goto("/workspaces/ui")
        await schedules.goto("/schedules")
        await chat.goto("/workspaces/chat/chat")
        await expect(runs.locator(f"tr[data-session-id='{first}']")).to_be_visible()
        run_deploy = workspace.get_by_role("button", name="Run Deploy a service")
        pause = schedules.get_by_role("button", name="Pause ui/nightly")
        run_now = schedules.get_by_role("button", name="Run ui/nightly now")
        send = chat.get_by_role("button", name="Send")
        for button in (run_deploy, pause, run_now, send):
            await expect(button).to_be_enabled()

        assert await asyncio.to_thread(proc.stop) == 0, proc.log()
        for page in (runs, workspace, schedules, chat):
            await expect(banner(page)).to_be_visible(timeout=POLLED)
        for button in (run_deploy, pause, run_now, send):
            await expect(button).to_be_disabled()
        await expect(runs.locator(f"tr[data-session-id='{first}']")).to_be_visible()  # as last seen
        await expect(runs.get_by_text("Could not load the runs")).to_have_count(0)  # one alert, not two
        await shot(schedules, "offline-01-schedules-down")

        await asyncio.to_thread(lambda: proc.start(port=port))
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            later = (await trigger(client, "broken"))["sessionId"]
        for page in (runs, workspace, schedules, chat):
            await expect(banner(page)).to_have_count(0, timeout=POLLED)
        for button in (run_deploy, pause, run_now, send):
            await expect(button).to_be_enabled()
        await expect(runs.locator(f"tr[data-session-id='{later}']")).to_be_visible()  # reloaded
        await expect(workspace.locator(f"tr[data-session-id='{later}']")).to_be_visible()
    finally:
        await ctx.close()
        proc.stop()
    assert not errors, errors
