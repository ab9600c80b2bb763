"""The web UI shows what `llm` agents do with tools (issue #14, item 7; "Done when": the run page shows the call).

Playwright drives Debian's Chromium (the browser fixture and helpers of tests/test_ui.py) against a real daemon
with the `tests/fixtures/agents_ui` workspace: an `llm` agent (`provider: openai`) on the scripted model server,
calling tools of the real MCP test server over stdio. Pinned here: the run page lists each tool call inside its
step (name, server, arguments, result or error, duration) from the recorded `toolCalls`, and live from the
`tool-call` / `tool-result` chunks while the step runs; the step's reasoning is folded; the workspace page lists
the MCP servers with their tools, and the file's load warnings; the JS reducer and live-call fold match the
Python ones. Pages are screenshotted to `test-artifacts/`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from atlas.cli.follow import fold_tool_chunk
from tests.daemon_proc import DaemonProcess
from tests.fake_models import FakeModels, Reply, ToolCall
from tests.test_follow_tools import agents_daemon
from tests.test_ui import CHROMIUM, _fold_python, shot, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

WS = "agents-ui"
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}
# A workspace of reference (Friday) keys atlas does not implement: it loads with warnings, and has no MCP servers.
WARNED = """version: "1.0"
workspace:
  id: warned
  name: Warned
skills:
  - name: summarise
"""


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    tmp = tmp_path_factory.mktemp("ui-tools")
    (tmp / "warned").mkdir()
    (tmp / "warned" / "workspace.yml").write_text(WARNED)
    with agents_daemon(tmp, tmp / "warned") as pair:
        yield pair


@pytest.fixture
def ui_url(agents: tuple[DaemonProcess, FakeModels]) -> str:
    return agents[0].url




async def trigger(client: httpx.AsyncClient) -> str:
    r = await client.post(f"/api/workspaces/{WS}/signals/ask?nowait=true", json={"payload": {}})
    assert r.status_code == 202, r.text
    sid: str = r.json()["sessionId"]
    return sid


async def wait_file(path: Path, timeout: float = 30) -> None:
    """Poll for a file the MCP test server writes (a deadline, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(path.exists):
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------------- run page


async def test_run_page_shows_each_tool_call_of_the_step(page: Page, client: httpx.AsyncClient,
                                                         agents: tuple[DaemonProcess, FakeModels]) -> None:
    fake = agents[1]
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3}), ToolCall("fail", {"message": "<b>nope</b>"})]),
                 Reply(text=["2 + 3 = ", "5"], reasoning="The add tool said 5."))
    sid = await trigger(client)
    view = await wait_status(client, sid, TERMINAL)
    assert view["status"] == "completed", view
    recorded = view["agentBlocks"][0]["toolCalls"]
    assert [(c["toolName"], c["server"]) for c in recorded] == [("add", "t"), ("fail", "t")]

    await page.goto(f"/sessions/{sid}")
    block = page.locator("li.block").filter(has=page.get_by_role("heading", name="calc"))
    await expect(block.get_by_role("heading", name="Tool calls (2)")).to_be_visible()
    add = block.locator("li.toolcall[data-tool='add']")
    await expect(add.locator(".toolcall-name")).to_have_text("add")
    await expect(add.locator(".tag")).to_have_text("t")
    await expect(add.locator(".toolcall-args")).to_have_text('{"a":2,"b":3}')
    await expect(add.locator(".toolcall-result code")).to_have_text("5")
    await expect(add.locator(".toolcall-duration")).to_have_text(f"{recorded[0]['durationMs']} ms")
    # The arguments unfold to the whole JSON; the unfolded state survives the page's re-renders.
    await add.get_by_text("Arguments").click()
    assert json.loads(await add.locator("pre").inner_text()) == {"a": 2, "b": 3}
    # A failed call: its error, styled as one, and never read as HTML (results are untrusted text).
    fail = block.locator("li.toolcall[data-tool='fail']")
    await expect(fail).to_have_class("toolcall toolcall-failed")
    await expect(fail.locator(".badge")).to_have_text("failed")
    await expect(fail.locator(".toolcall-error")).to_have_text(f"Error: {recorded[1]['error']}")
    assert "<b>nope</b>" in recorded[1]["error"]
    await expect(fail.locator(".toolcall-error b")).to_have_count(0)
    # The reasoning is there, folded.
    reasoning = block.locator("details").filter(has=page.locator("summary", has_text="Reasoning"))
    await expect(reasoning).not_to_have_attribute("open", "")
    await reasoning.locator("summary").click()
    await expect(reasoning.locator("pre")).to_have_text("The add tool said 5.")
    await shot(page, "30-run-tool-calls")


async def test_run_page_shows_a_running_tool_call_live(page: Page, client: httpx.AsyncClient,
                                                       agents: tuple[DaemonProcess, FakeModels],
                                                       tmp_path: Path) -> None:
    """Chunks are never replayed, so the page must be following before the call starts: the first tool
    (`rendezvous`) holds the step until the page shows it running; the second (`slow`) is the live call."""
    fake = agents[1]
    gate, opened, marker = tmp_path / "gate", tmp_path / "open", tmp_path / "m"
    fake.enqueue(Reply(tool_calls=[ToolCall("rendezvous", {"mine": str(gate), "other": str(opened)})]),
                 Reply(tool_calls=[ToolCall("slow", {"seconds": 30, "marker": str(marker)})]))
    sid = await trigger(client)
    try:
        await wait_file(gate)
        await page.goto(f"/sessions/{sid}")
        await expect(page.locator(".connection")).to_have_text("● Live")
        block = page.locator("li.block").filter(has=page.get_by_role("heading", name="calc"))
        await expect(block.locator(".badge").first).to_have_text("running")
        opened.touch()
        await wait_file(Path(f"{marker}.started"))
        # The rendezvous call started before the page followed: only its result was seen, so it has no arguments.
        meet = block.locator("li.toolcall[data-tool='rendezvous']")
        await expect(meet.locator(".toolcall-result code")).to_have_text("met")
        slow = block.locator("li.toolcall[data-tool='slow']")
        await expect(slow).to_have_class("toolcall toolcall-running")
        await expect(slow.locator(".badge")).to_have_text("running")
        await expect(slow.locator(".tag")).to_have_text("t")
        await expect(slow.locator(".toolcall-args")).to_contain_text('{"seconds":30,"marker":')
        await expect(slow.locator(".toolcall-pending")).to_have_text("Waiting for the result…")
        await shot(page, "31-run-tool-call-live")
    finally:
        await client.delete(f"/api/sessions/{sid}")
    await expect(page.locator(".run-status")).to_have_text("cancelled")
    view = await wait_status(client, sid, TERMINAL)
    block_view = view["agentBlocks"][0]
    # Once the step ended the page shows what the record has (or, with no record, the calls it saw, unfinished).
    if block_view["toolCalls"]:
        names = [c["toolName"] for c in block_view["toolCalls"]]
        await expect(block.locator("li.toolcall")).to_have_count(len(names))
        await expect(block.locator("li.toolcall[data-tool='slow'].toolcall-running")).to_have_count(0)
    else:
        await expect(slow.locator(".toolcall-pending")).to_have_text("No result: the step ended first.")
    await shot(page, "32-run-tool-call-cancelled")


# ------------------------------------------------------------------------------------------- workspace page


async def test_workspace_page_lists_the_mcp_servers_and_their_tools(page: Page, client: httpx.AsyncClient) -> None:
    await page.goto(f"/workspaces/{WS}")
    await expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    servers = page.get_by_role("region", name="MCP servers")
    server = servers.locator("li.server[data-server='t']")
    await expect(server.get_by_role("heading", name="t")).to_be_visible()
    await expect(server.locator(".tag")).to_have_text("stdio")
    await expect(server.locator(".server-status")).to_have_text("running")
    await expect(server.get_by_text("The test tools server")).to_be_visible()
    listing = (await client.get(f"/api/workspaces/{WS}/tools")).json()
    tools = listing["servers"][0]["tools"]
    await expect(server.locator("tbody tr")).to_have_count(len(tools))
    add = server.locator("tr[data-tool='add']")
    await expect(add.locator("th")).to_have_text("add")
    await expect(add.locator("td").first).to_have_text("Add two integers.")
    await expect(add.locator(".pill")).to_have_text(["a*", "b*"])
    # No load warnings here: no warnings section.
    await expect(page.get_by_role("heading", name="Configuration warnings")).to_have_count(0)
    await shot(page, "33-workspace-mcp-servers")


async def test_workspace_page_shows_the_load_warnings(page: Page, client: httpx.AsyncClient) -> None:
    ws = (await client.get("/api/workspaces/warned")).json()
    warnings = ws["warnings"]
    assert warnings, ws  # `skills` is a reference key atlas does not implement: it loads with a warning
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await page.goto("/workspaces/warned")
    section = page.get_by_role("region", name=f"Configuration warnings ({len(warnings)})")
    items = section.locator("li")
    await expect(items).to_have_count(len(warnings))
    for item, warning in zip(await items.all(), warnings, strict=True):
        await expect(item).to_contain_text(f"{warning['file']}:{warning['line']}:{warning['column']}")
        await expect(item).to_contain_text(warning["message"])
    # A workspace without MCP servers has no servers section, and never asks for its tools.
    await expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    await expect(page.get_by_role("heading", name="MCP servers")).to_have_count(0)
    assert not [url for url in asked if url.endswith("/tools")], asked
    await shot(page, "34-workspace-warnings")


# ------------------------------------------------------------------------ the JS folds are the Python ones


def _tool_ops() -> list[list[Any]]:
    """A session whose llm step makes calls live (chunks), then records them with its reasoning."""
    sid = "2c4f6a8b-0d1e-4f3a-8b5c-7d9e1f2a3b4c"
    calls = [{"toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "result": "5", "durationMs": 4,
              "server": "t"},
             {"toolCallId": "c2", "toolName": "fail", "args": {"message": "x"}, "result": "Error: x", "durationMs": 1,
              "error": "x", "server": "t"}]
    head = {"sessionId": sid, "workspaceId": WS, "jobName": "ask", "signalId": "ask", "task": "ask",
            "correlationId": sid, "rootSessionId": sid, "depth": 0}
    plan = [{"agentName": "calc", "stateId": "s", "task": "t", "actionType": "agent", "outputKey": "calc"}]
    stamp = "2026-12-04T10:00:00.000Z"
    chunk = {"sessionId": sid, "stepNumber": 1}
    return [
        ["event", {"type": "session:queued", "seq": 1, "timestamp": stamp, **head, "trigger": "http",
                   "plannedSteps": plan, "payload": {}}],
        ["event", {"type": "session:start", "seq": 2, "timestamp": stamp, **head, "plannedSteps": plan}],
        ["event", {"type": "step:start", "seq": 3, "timestamp": stamp, "sessionId": sid, "stepNumber": 1,
                   "agentName": "calc", "stateId": "s", "actionType": "agent", "task": "t", "outputKey": "calc"}],
        ["chunk", {**chunk, "chunk": {"type": "tool-call", "toolCallId": "c1", "toolName": "add", "args": {"a": 2}}}],
        ["chunk", {**chunk, "chunk": {"type": "text-delta", "delta": "thinking"}}],
        ["chunk", {**chunk, "chunk": {"type": "tool-result", "toolCallId": "c1", "toolName": "add", "result": "5",
                                      "durationMs": 4}}],
        ["event", {"type": "step:complete", "seq": 4, "timestamp": stamp, "sessionId": sid, "stepNumber": 1,
                   "status": "completed", "durationMs": 9, "toolCalls": calls, "output": "5", "reasoning": "why",
                   "usage": {"inputTokens": 3, "outputTokens": 2}}],
        ["event", {"type": "session:complete", "seq": 5, "timestamp": stamp, "sessionId": sid,
                   "status": "completed", "durationMs": 10}],
    ]


async def test_the_js_reducer_keeps_tool_calls_and_reasoning_like_the_python_one(page: Page) -> None:
    ops = _tool_ops()
    cases = [ops[:n] for n in range(3, len(ops) + 1)]  # every prefix: live views too, not only the end
    expected = [json.loads(json.dumps(_fold_python(case))) for case in cases]
    assert expected[-1]["view"]["agentBlocks"][0]["reasoning"] == "why"
    await page.goto("/")
    got = await page.evaluate("""async (cases) => {
        const R = await import('/assets/js/reducer.js');
        return cases.map((ops) => {
          let view = R.initialView();
          for (const [kind, item] of ops) view = kind === 'event' ? R.reduce(view, item) : R.applyChunk(view, item);
          return { view, summary: R.summarize(view) };
        });
    }""", cases)
    assert got == expected


async def test_the_js_live_call_fold_is_the_python_one(page: Page) -> None:
    """`toolcalls.js` and `atlas.cli.follow.fold_tool_chunk` turn the same chunks into the same live calls."""
    chunks: list[dict[str, Any]] = [
        {"type": "tool-call", "toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "server": "t"},
        {"type": "tool-call", "toolCallId": "c2", "toolName": "add", "args": {"a": 1, "b": 1}, "server": "t"},
        {"type": "tool-result", "toolCallId": "c2", "toolName": "add", "result": "2", "durationMs": 3, "server": "t"},
        {"type": "tool-result", "toolCallId": "c9", "toolName": "echo", "result": "seen late", "durationMs": 1},
        {"type": "tool-call", "toolName": "slow", "args": {"seconds": 1}},
        {"type": "tool-result", "toolName": "slow", "error": "timed out", "result": "Error", "durationMs": 7},
        {"type": "tool-result", "toolCallId": "c1", "toolName": "add", "result": {"sum": 5}, "durationMs": 5},
        {"type": "progress", "current": 1},
    ]
    expected: list[list[dict[str, Any]]] = []
    calls: list[dict[str, Any]] = []
    for body in chunks:
        calls = fold_tool_chunk(calls, body)
        expected.append(calls)
    await page.goto("/")
    got = await page.evaluate("""async (chunks) => {
        const T = await import('/assets/js/toolcalls.js');
        let calls = [];
        return chunks.map((body) => (calls = T.foldToolChunk(calls, body)));
    }""", chunks)
    assert got == expected
