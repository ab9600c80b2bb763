"""The run page's Logs tab (issue #16, item 1): what the steps wrote, kept with the run. After a run ended (and on a
fresh load of its page) the tab shows every kept line with its step and stream, secrets redacted; while a step still
runs it shows its lines live. Playwright drives Debian's Chromium (the browser fixture of tests/test_ui.py) against
a real daemon with the `tests/fixtures/steplogs` workspace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_steplogs import SECRET
from tests.test_ui import CHROMIUM, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def steplogs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("ui-steplogs"), [FIXTURES / "steplogs"],
                      {"STEPLOGS_SECRET": SECRET}).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def ui_url(steplogs: DaemonProcess) -> str:
    return steplogs.url




async def trigger(client: httpx.AsyncClient, signal: str, payload: dict[str, str] | None = None) -> str:
    r = await client.post(f"/api/workspaces/steplogs/signals/{signal}?nowait=true", json={"payload": payload or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["sessionId"])


async def test_logs_tab_shows_the_kept_log_of_an_ended_run(page: Page, client: httpx.AsyncClient) -> None:
    sid = await trigger(client, "talk")
    assert (await wait_status(client, sid, TERMINAL))["status"] == "completed"
    await page.goto(f"/sessions/{sid}")
    await page.get_by_role("tab", name="Logs").click()
    lines = page.locator(".log-line")
    await expect(lines).to_have_count(8)
    await expect(page.locator(".log-status")).to_have_text("8 lines kept with this run.")
    stdout = page.locator(".log-line.log-stdout[data-step='1'] .log-text")
    await expect(stdout).to_have_text(["out one", "token is ***", "out two"])
    await expect(page.locator(".log-line.log-stderr[data-step='1'] .log-text")).to_have_text(["err one", "err two"])
    await expect(page.locator(".log-line[data-step='2'] .log-text")).to_have_text(
        ["py says hello", "py warns", "py says bye"])
    await expect(page.locator(".log-line[data-step='2'] .log-step").first).to_have_text("step 2")
    assert SECRET not in await page.locator(".logs").inner_text()


async def test_logs_tab_shows_lines_live_while_the_step_runs(page: Page, client: httpx.AsyncClient,
                                                             tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    sid = await trigger(client, "gated", {"gate": str(gate)})
    await page.goto(f"/sessions/{sid}")
    await page.get_by_role("tab", name="Logs").click()
    await expect(page.locator(".log-text")).to_have_text(["before gate"])
    assert (await client.get(f"/api/sessions/{sid}")).json()["status"] == "active"  # still waiting for the gate
    gate.touch()
    await expect(page.locator(".log-text")).to_have_text(["before gate", "after gate"])
    await expect(page.locator(".log-status")).to_have_text("2 lines kept with this run.")


async def test_logs_tab_of_a_failed_python_step_shows_its_prints_then_its_traceback(page: Page,
                                                                                   client: httpx.AsyncClient) -> None:
    sid = await trigger(client, "crash")
    assert (await wait_status(client, sid, TERMINAL))["status"] == "failed"
    await page.goto(f"/sessions/{sid}")
    await page.get_by_role("tab", name="Logs").click()
    await expect(page.locator(".logs")).to_have_attribute("data-state", "ended")
    texts = await page.locator(".log-text").all_inner_texts()
    assert texts[0] == "loading rows"
    assert "Traceback (most recent call last):" in texts and texts[-1] == "ValueError: row 3 is bad"
    assert any("steplogs_steps.py" in text and "in print_then_raise" in text for text in texts), texts
