"""The chat page of the web UI (issue #17, item 4): talk to a workspace from the browser.

Playwright drives Debian's Chromium against a real daemon with the `tests/fixtures/chat_ui` workspace (a `greet`
job behind an http signal, a `notes` memory corpus). The chat model is the scripted model server of
`tests/fake_models.py`, given to the daemon as its chat model (ATLAS_CHAT_PROVIDER/ATLAS_CHAT_MODEL and
OPENAI_BASE_URL/OPENAI_API_KEY); a reply with a `gate` is held mid-stream until the test opens it, which is how a
test sees a reply *while* it streams (the page reloaded during it, two tabs at once) without any sleep.

Pinned here: a reply's text appears as it streams and stays after a reload, and a reload during the reply
follows it again (`GET …/chat/<id>/stream`) with the input disabled until it ends; Enter sends and Shift+Enter is a
new line; a tool call is folded inside the reply and the run it started is linked, and that run's page links back
to the chat; two tabs chatting in the same workspace at once each get their own answer and both chats are listed;
rename changes the title, and delete asks first.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from tests.browser import CHROMIUM, new_context
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models
from tests.test_ui import shot

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

WS = "chat-ui"
CHAT_PAGE = f"/workspaces/{WS}/chat"
CHAT_API = f"/api/workspaces/{WS}/chat"
LONG = 30_000  # ms: a reply goes through the daemon, the model server and a job run


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModels]:
    with fake_models() as server:
        yield server


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, fake: FakeModels) -> Iterator[DaemonProcess]:
    env = {"ATLAS_CHAT_PROVIDER": "openai", "ATLAS_CHAT_MODEL": "fake-model",
           "OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": "sk-chat-ui-test-0123456789"}
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-ui-chat"), [FIXTURES / "chat_ui"], env=env).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


@pytest.fixture(autouse=True)
async def script_used_up(fake: FakeModels) -> AsyncIterator[None]:
    """Every test consumes exactly the replies it scripted: the next test starts on an empty script."""
    assert fake.pending == 0
    yield
    assert fake.pending == 0, f"{fake.pending} scripted replies were not asked for"


def message_box(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message")


def last_reply(page: Page) -> Locator:
    return page.locator("li.msg-assistant").last


def chat_id_of(page: Page) -> str:
    match = re.search(rf"{CHAT_PAGE}/([^/?#]+)$", page.url)
    assert match, f"no chat id in {page.url}"
    return match.group(1)


async def chat_of(client: httpx.AsyncClient, chat_id: str) -> dict[str, Any]:
    r = await client.get(f"{CHAT_API}/{chat_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def new_chat(page: Page) -> None:
    await page.goto(CHAT_PAGE)
    await expect(page.get_by_role("heading", level=1)).to_have_text("New chat")
    await expect(message_box(page)).to_be_enabled()


async def send(page: Page, text: str) -> None:
    box = message_box(page)
    await box.fill(text)
    await box.press("Enter")


async def test_a_reply_streams_in_and_stays_after_a_reload_even_one_during_the_reply(
        page: Page, client: httpx.AsyncClient, fake: FakeModels) -> None:
    gate = threading.Event()
    fake.enqueue(Reply(text=["Hello ", "from ", "atlas."], gate=gate))
    await new_chat(page)
    # The memory panel (the workspace's corpora) sits beside the chat.
    await expect(page.locator(".chat-memory .memory-corpus[data-corpus='notes']")).to_be_visible()
    await send(page, "Say hello")

    # The first pieces are on the page while the model still holds the last one: text streams in as it comes.
    reply = last_reply(page)
    await expect(reply.locator(".msg-text")).to_have_text("Hello from ", timeout=LONG)
    await expect(reply).to_have_attribute("data-status", "streaming")
    await expect(message_box(page)).to_be_disabled()
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}/[^/]+$"))  # the new chat is in the address
    chat_id = chat_id_of(page)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Say hello")

    # A reload during the reply finds it still being written and follows it again, from its start.
    await page.reload()
    await expect(page.locator("li.msg-user .msg-text")).to_have_text(["Say hello"])
    await expect(last_reply(page).locator(".msg-text")).to_have_text("Hello from ", timeout=LONG)
    await expect(message_box(page)).to_be_disabled()
    gate.set()
    await expect(last_reply(page).locator(".msg-text")).to_have_text("Hello from atlas.", timeout=LONG)
    await expect(last_reply(page)).to_have_attribute("data-status", "completed")
    await expect(message_box(page)).to_be_enabled()
    await expect(message_box(page)).to_be_focused()

    # And after the reply, a reload shows the whole exchange, and the chat is listed with its title.
    await page.reload()
    await expect(page.locator("li.msg .msg-text")).to_have_text(["Say hello", "Hello from atlas."])
    await expect(page.locator(f".chat-item[data-chat-id='{chat_id}'] .chat-title")).to_have_text("Say hello")
    await expect(page.locator(f".chat-item[data-chat-id='{chat_id}'] .chat-link")).to_have_attribute(
        "aria-current", "page")
    chat = await chat_of(client, chat_id)
    assert [(m["role"], m["text"]) for m in chat["messages"]] == [
        ("user", "Say hello"), ("assistant", "Hello from atlas.")]
    assert chat["messages"][1]["status"] == "completed"


async def test_enter_sends_and_shift_enter_makes_a_new_line(page: Page, fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["Two lines ", "received."]))
    await new_chat(page)
    box = message_box(page)
    await box.click()
    await page.keyboard.type("line one")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("line two")
    await expect(box).to_have_value("line one\nline two")  # Shift+Enter added a line and sent nothing
    await expect(page.locator("li.msg")).to_have_count(0)

    async with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(CHAT_API)) as sent:
        await page.keyboard.press("Enter")
    request = await sent.value
    assert json.loads(request.post_data or "") == {"message": "line one\nline two"}
    assert (await request.all_headers())["accept"] == "text/event-stream"
    await expect(box).to_have_value("")
    await expect(page.locator("li.msg-user .msg-text")).to_have_text("line one\nline two")
    await expect(last_reply(page).locator(".msg-text")).to_have_text("Two lines received.", timeout=LONG)
    await expect(box).to_be_enabled()
    # A blank message is not sent: Enter in an empty box does nothing.
    await box.press("Enter")
    await expect(page.locator("li.msg")).to_have_count(2)


async def test_a_tool_call_is_folded_in_the_reply_and_the_run_it_started_links_both_ways(
        page: Page, client: httpx.AsyncClient, fake: FakeModels) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"name": "Ada"}, id="call-greet-1")]),
                 Reply(text=["I greeted ", "Ada."]))
    await new_chat(page)
    await send(page, "Please greet Ada")
    reply = last_reply(page)
    await expect(reply.locator(".msg-text")).to_have_text("I greeted Ada.", timeout=LONG)
    await expect(reply).to_have_attribute("data-status", "completed")

    # The call is folded inside the reply: a closed <details> until opened, then its arguments and result.
    tools = reply.locator("details.chat-tools")
    await expect(tools).to_have_count(1)
    await expect(tools).not_to_have_attribute("open", "")
    call = tools.locator(".toolcall[data-tool='greet']")
    await expect(call).to_be_hidden()
    await tools.locator("summary").first.click()
    await expect(call).to_be_visible()
    await expect(call.locator(".toolcall-name")).to_have_text("greet")
    args = call.locator("details[data-key$=':args']")
    await expect(args.locator("pre")).to_be_hidden()
    await args.locator("summary").click()
    assert json.loads(await args.locator("pre").inner_text()) == {"name": "Ada"}
    await expect(call.locator("details[data-key$=':result'] summary")).to_have_text("Result")
    await shot(page, "chat-01-tool-call")

    # The run it started is linked, and its page links back to this chat.
    chat_id = chat_id_of(page)
    link = reply.locator(".msg-runs a")
    await expect(link).to_have_count(1)
    href = await link.get_attribute("href")
    assert href and href.startswith("/sessions/")
    session_id = href.removeprefix("/sessions/")
    await expect(reply.locator(".msg-runs")).to_contain_text("greet")
    view = (await client.get(f"/api/sessions/{session_id}")).json()
    assert view["trigger"] == "chat" and view["jobName"] == "greet" and view["payload"] == {"name": "Ada"}
    assert view["chat"]["chatId"] == chat_id
    stored = await chat_of(client, chat_id)
    assert stored["messages"][-1]["sessions"][0]["sessionId"] == session_id
    assert view["correlationId"] == stored["messages"][-1]["correlationId"]

    await link.click()
    await expect(page).to_have_url(re.compile(rf"/sessions/{session_id}$"))
    back = page.locator("#chat-link")
    await expect(back).to_have_attribute("href", f"{CHAT_PAGE}/{chat_id}")
    await back.click()
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}/{chat_id}$"))
    await expect(last_reply(page).locator(".msg-text")).to_have_text("I greeted Ada.")


async def test_two_tabs_chat_in_the_same_workspace_at_once(
        context: BrowserContext, client: httpx.AsyncClient, fake: FakeModels) -> None:
    first_gate = threading.Event()
    # The first tab's turn takes the first reply and is held mid-stream while the second tab's whole turn runs.
    fake.enqueue(Reply(text=["Answer ", "for ", "the first tab."], gate=first_gate),
                 Reply(text=["Answer ", "for ", "the second tab."]))
    first, second = await context.new_page(), await context.new_page()
    await asyncio.gather(new_chat(first), new_chat(second))

    await send(first, "Question from the first tab")
    await expect(last_reply(first).locator(".msg-text")).to_have_text("Answer for ", timeout=LONG)
    await send(second, "Question from the second tab")
    await expect(last_reply(second).locator(".msg-text")).to_have_text("Answer for the second tab.", timeout=LONG)
    await expect(message_box(second)).to_be_enabled()
    await expect(message_box(first)).to_be_disabled()  # the first is still streaming, at the same time
    await expect(last_reply(first)).to_have_attribute("data-status", "streaming")
    first_gate.set()
    await expect(last_reply(first).locator(".msg-text")).to_have_text("Answer for the first tab.", timeout=LONG)
    await expect(message_box(first)).to_be_enabled()

    ids = {chat_id_of(first), chat_id_of(second)}
    assert len(ids) == 2
    # Both chats are listed in both tabs (the list refreshes itself), each with its own answer.
    for page in (first, second):
        titles = page.locator(".chat-item .chat-title")
        await expect(titles.filter(has_text="Question from the first tab")).to_have_count(1, timeout=LONG)
        await expect(titles.filter(has_text="Question from the second tab")).to_have_count(1, timeout=LONG)
    listed = {chat["chatId"] for chat in (await client.get(CHAT_API)).json()["chats"]}
    assert ids <= listed
    for page, question, answer in ((first, "Question from the first tab", "Answer for the first tab."),
                                   (second, "Question from the second tab", "Answer for the second tab.")):
        chat = await chat_of(client, chat_id_of(page))
        assert [m["text"] for m in chat["messages"]] == [question, answer]


async def test_rename_changes_the_title_and_delete_asks_first(
        page: Page, client: httpx.AsyncClient, fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["Noted."]))
    await new_chat(page)
    await send(page, "A chat to rename and delete")
    await expect(last_reply(page).locator(".msg-text")).to_have_text("Noted.", timeout=LONG)
    chat_id = chat_id_of(page)
    item = page.locator(f".chat-item[data-chat-id='{chat_id}']")
    await expect(item.locator(".chat-title")).to_have_text("A chat to rename and delete")

    await item.get_by_role("button", name=re.compile("^Rename chat")).click()
    dialog = page.get_by_role("dialog", name="Rename chat")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("textbox", name="Title").fill("Renamed from the page")
    async with page.expect_response(lambda r: r.request.method == "PATCH"
                                    and r.url.endswith(f"/{chat_id}/title")) as answer:
        await dialog.get_by_role("button", name="Save title").click()
    assert (await answer.value).status == 200
    await expect(page.get_by_role("heading", level=1)).to_have_text("Renamed from the page")
    await expect(item.locator(".chat-title")).to_have_text("Renamed from the page")
    assert (await chat_of(client, chat_id))["title"] == "Renamed from the page"

    # Delete asks first; keeping the chat deletes nothing.
    await item.get_by_role("button", name=re.compile("^Delete chat")).click()
    confirm = page.get_by_role("alertdialog", name="Delete this chat?")
    await expect(confirm).to_be_visible()
    await expect(confirm).to_contain_text("Renamed from the page")
    await expect(confirm.get_by_role("button", name="Keep chat")).to_be_focused()
    await confirm.get_by_role("button", name="Keep chat").click()
    await expect(confirm).to_be_hidden()
    await expect(item).to_be_visible()
    assert (await client.get(f"{CHAT_API}/{chat_id}")).status_code == 200

    await item.get_by_role("button", name=re.compile("^Delete chat")).click()
    async with page.expect_response(lambda r: r.request.method == "DELETE" and r.url.endswith(f"/{chat_id}")) as gone:
        await page.get_by_role("alertdialog", name="Delete this chat?").get_by_role(
            "button", name="Delete chat").click()
    assert (await gone.value).status == 204
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}$"))  # the open chat is gone: a new one
    await expect(page.locator(f".chat-item[data-chat-id='{chat_id}']")).to_have_count(0)
    assert (await client.get(f"{CHAT_API}/{chat_id}")).status_code == 404


async def test_the_workspace_pages_link_to_the_chat(page: Page) -> None:
    await page.goto("/")
    card = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="Chat UI tests"))
    await card.get_by_role("link", name="Chat", exact=True).click()
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}$"))
    await page.goto(f"/workspaces/{WS}")
    await page.locator("#chat-link").click()
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("New chat")
    # A chat that does not exist (deleted, or a wrong link) says so instead of offering an input.
    await page.goto(f"{CHAT_PAGE}/no-such-chat")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Chat not found")
    await expect(message_box(page)).to_be_hidden()
    await page.get_by_role("link", name="Start a new chat").click()
    await expect(page).to_have_url(re.compile(rf"{CHAT_PAGE}$"))


async def test_a_390_px_phone_can_chat_without_sideways_scrolling(browser: Browser, ui: DaemonProcess,
                                                                   fake: FakeModels) -> None:
    """At 390 px the chat fits the screen: the reply, the message box and its Send button are on screen, nothing
    makes the page scroll sideways, and the chat list is still reachable."""
    fake.enqueue(Reply(text=["A reply long enough to wrap on a phone screen, ", "several times over, and then "
                             "some more words with a-very-long-unbroken-token-that-must-wrap-too."]))
    ctx, errors = await new_context(browser, ui.url, viewport={"width": 390, "height": 844}, is_mobile=True,
                                    has_touch=True)
    page = await ctx.new_page()
    await new_chat(page)
    await send(page, "Hello from a phone")
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "completed", timeout=LONG)
    await expect(reply.locator(".msg-text")).to_be_in_viewport()
    await expect(message_box(page)).to_be_in_viewport()
    await expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    chat_id = chat_id_of(page)
    item = page.locator(f".chat-item[data-chat-id='{chat_id}'] .chat-link")
    await item.scroll_into_view_if_needed()
    await expect(item).to_be_visible()
    await shot(page, "chat-390px")
    await ctx.close()
    assert not errors, errors
