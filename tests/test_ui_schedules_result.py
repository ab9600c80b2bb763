"""The Schedules page shows a schedule's last result: its run's status and a link to it (issue #16, item 7).

"Run now" is an ordinary trigger and not the schedule's result, and cron has no seconds field, so the schedule
fires the way tests/test_scheduler.py makes it: an in-process daemon whose scheduler reads a fake clock, one minute
advanced and one tick awaited. The daemon is served by uvicorn in the test's event loop for Chromium to load.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, expect

from atlas.api.app import create_app
from atlas.runtime.daemon import Daemon
from atlas.runtime.scheduler import Scheduler
from tests import inproc
from tests.browser import new_context
from tests.daemon_proc import FIXTURES
from tests.test_scheduler import T0, WS, FakeClock, eventually, sessions
from tests.test_ui import CHROMIUM

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The schedulers' clock; their own loops stay asleep, so only the test's ticks fire schedules."""
    fake = FakeClock(T0, wake_sleepers=False)
    monkeypatch.setattr("atlas.runtime.daemon.Scheduler", functools.partial(Scheduler, clock=fake))
    return fake


@contextlib.asynccontextmanager
async def served(home: Path) -> AsyncIterator[tuple[Daemon, str]]:
    """The cron workspace's daemon in this process, and the URL its API and UI answer on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    async with inproc.running(home, (FIXTURES / "cron",), port=port) as daemon:
        server = uvicorn.Server(uvicorn.Config(create_app(daemon), loop="none", lifespan="off", access_log=False,
                                               log_level="warning", timeout_graceful_shutdown=2))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually(lambda: server.started)
        try:
            yield daemon, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


async def test_the_schedules_page_shows_the_last_result_with_a_link_to_its_run(
        browser: Browser, tmp_path: Path, clock: FakeClock) -> None:
    async with served(tmp_path / "home") as (daemon, url):
        clock.advance(timedelta(seconds=30))  # 12:01:00: every-minute is due
        await daemon.scheduler.tick()
        (row,) = sessions(daemon, "every-minute")
        sid = row["sessionId"]
        assert (await daemon.store.wait_terminal(sid, 30))["status"] == "completed"

        ctx, errors = await new_context(browser, url)
        page = await ctx.new_page()
        await page.goto("/schedules")
        ran = page.locator(f"tr[data-schedule='{WS}/every-minute'] td.last-result")
        await expect(ran.locator(".badge")).to_have_text("completed")
        link = ran.get_by_role("link", name=sid[:8], exact=True)
        assert await link.get_attribute("href") == f"/sessions/{sid}"
        await expect(page.locator(f"tr[data-schedule='{WS}/nightly'] td.last-result")).to_have_text("Not run yet")

        await link.click()
        await expect(page.locator("#session-id")).to_have_text(sid)
        await expect(page.locator(".run-status")).to_have_text("completed")
        await ctx.close()
        assert not errors, errors
