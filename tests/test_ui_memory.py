"""The memory panel of the workspace page (issue #17, item 4): Playwright drives Chromium against a real daemon
whose `memws` workspace got two `notes` entries from its llm agent (the scripted model server calls
`save_memory_entry`).

Pinned here: the page shows each declared corpus with its count and entries, newest first, and an empty corpus says
so; Delete asks first (Cancel keeps the entry), Confirm sends `DELETE …/memory/notes/<id>` and the entry and the
count go; the page of a workspace without memory has no Memory section.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.fake_models import Reply, ToolCall, fake_models
from tests.test_api_core import post, wait_terminal
from tests.test_ui import CHROMIUM, shot

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with fake_models() as fake:
        d = DaemonProcess(tmp_path_factory.mktemp("atlas-ui-memory"), [FIXTURES / "memory", FIXTURES / "core"],
                          {"OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": "sk-test-ui-memory"}).start()
        try:
            for n, fact in enumerate(["The staging database is db-7", "Deploys happen on Tuesdays"]):
                fake.enqueue(Reply(tool_calls=[ToolCall("save_memory_entry", {"text": fact}, id=f"c{n}")]),
                             Reply(text=["Saved."]))
                r = post(d, "memws", "remember", {"payload": {"fact": fact}}, query="")
                assert r.status_code == 200, r.text
                assert wait_terminal(d, r.json()["sessionId"])["status"] == "completed"
            yield d
        finally:
            code = d.stop()
            assert code == 0, f"daemon exited with {code}:\n{d.log()}"


async def test_the_workspace_page_lists_memory_and_deletes_an_entry_after_confirming(
    page: Page, client: httpx.AsyncClient
) -> None:
    entries = (await client.get("/api/workspaces/memws/memory/notes")).json()["entries"]
    newest, oldest = entries
    await page.goto("/workspaces/memws")
    section = page.get_by_role("region", name="Memory", exact=True)
    await expect(section).to_be_visible()
    notes = section.locator('[data-corpus="notes"]')
    await expect(notes.locator(".memory-count")).to_have_text("2 entries")
    await expect(notes.locator(".memory-text")).to_have_text([newest["text"], oldest["text"]])  # newest first
    await expect(section.locator('[data-corpus="scratch"]')).to_contain_text("Nothing remembered yet.")
    await shot(page, "memory-01-panel")

    await notes.get_by_role("button", name=f"Delete memory entry {newest['id']}").click()
    await notes.get_by_role("button", name="Cancel").click()  # asked first: nothing is deleted
    await expect(notes.locator(".memory-text")).to_have_count(2)

    await notes.get_by_role("button", name=f"Delete memory entry {newest['id']}").click()
    confirm = notes.get_by_role("button", name=f"Confirm deleting memory entry {newest['id']}")
    await expect(confirm).to_be_focused()
    async with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        await confirm.click()
    response = await answer.value
    assert response.status == 204
    assert response.url.endswith(f"/api/workspaces/memws/memory/notes/{newest['id']}")
    await expect(notes.locator(".memory-text")).to_have_text([oldest["text"]])
    await expect(notes.locator(".memory-count")).to_have_text("1 entry")
    remaining = (await client.get("/api/workspaces/memws/memory/notes")).json()["entries"]
    assert [e["id"] for e in remaining] == [oldest["id"]]


async def test_a_workspace_without_memory_has_no_memory_section(page: Page) -> None:
    await page.goto("/workspaces/core")
    await expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    await expect(page.get_by_role("region", name="Memory", exact=True)).to_have_count(0)
