"""Tool-calling agents inside a real daemon (issue #14, "Done when"): a reference-format agent (`provider`, `model`,
`prompt`, `tools`, `max_steps`, nothing atlas-only) calls a stdio MCP tool, gets the result and answers with it,
through the OpenAI and the Anthropic wire formats; the call is on the record; a cancel aborts a running tool;
MCP server processes never outlive the daemon, also after kill -9.

The model is the scripted server of `tests.fake_models` (no provider can be reached from here), reached through the
providers' own base-URL variables; the MCP server is the real `tests.mcp_servers.tools_server`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.mcp.reaper import session_members
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models
from tests.mcp_servers import REPO
from tests.test_api_core import post, wait_terminal
from tests.test_event_schemas import document

KEY = "sk-test-agents-0123456789abcdef"
SERVICE_TOKEN = "svc-token-fedcba9876543210"
WORKSPACE = FIXTURES / "agents_friday"


def daemon_env(fake: FakeModels) -> dict[str, str]:
    return {"OPENAI_BASE_URL": fake.openai_url, "ANTHROPIC_BASE_URL": fake.anthropic_url,
            "OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY, "ATLAS_TEST_REPO": str(REPO),
            "ATLAS_TEST_SERVICE_TOKEN": SERVICE_TOKEN}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    with fake_models() as fake:
        d = DaemonProcess(tmp_path_factory.mktemp("agents-home"), [WORKSPACE], daemon_env(fake)).start()
        try:
            yield d, fake
        finally:
            d.stop()


def events_of(d: DaemonProcess, sid: str) -> list[dict[str, Any]]:
    """The session's events as its SSE stream replays them (the stream ends once the session is terminal)."""
    r = httpx.get(f"{d.url}/api/sessions/{sid}/stream", timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_reference_agent_calls_a_stdio_mcp_tool_and_answers_with_it(
    env: tuple[DaemonProcess, FakeModels], wire: str
) -> None:
    d, fake = env
    before = len(fake.requests)
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 19, "b": 23}, id="call-1")], usage=(30, 8)),
                 Reply(text=["The sum ", "is 42."], usage=(50, 6)))
    r = post(d, "agents-friday", f"ask-{wire}", {"payload": {"question": "What is 19 + 23?"}}, query="")
    assert r.status_code == 200, r.text
    view = wait_terminal(d, r.json()["sessionId"])
    assert view["status"] == "completed", view
    [block] = view["agentBlocks"]
    assert block["output"] == "The sum is 42."
    assert block["usage"]["inputTokens"] == 80 and block["usage"]["outputTokens"] == 14
    [call] = block["toolCalls"]
    assert {k: call[k] for k in ("toolCallId", "toolName", "args", "result", "server")} == {
        "toolCallId": "call-1", "toolName": "add", "args": {"a": 19, "b": 23}, "result": "42", "server": "tools"}
    assert isinstance(call["durationMs"], int)
    complete = next(e for e in events_of(d, view["sessionId"]) if e["type"] == "step:complete")
    assert complete["toolCalls"] == [call]
    first, second = fake.requests[before:]
    assert {first.format, second.format} == {wire}
    sent = second.json["messages"]
    if wire == "openai":
        assert sent[0] == {"role": "system", "content": "You add numbers with the add tool and answer with the sum."}
        assert sent[1] == {"role": "user", "content": "What is 19 + 23?"}
        assert sent[-1] == {"role": "tool", "tool_call_id": "call-1", "content": "42"}
    else:
        assert second.json["system"] == "You add numbers with the add tool and answer with the sum."
        assert sent[-1]["content"][0]["tool_use_id"] == "call-1" and sent[-1]["content"][0]["content"] == "42"


def test_tool_arguments_and_results_never_record_a_credential(env: tuple[DaemonProcess, FakeModels]) -> None:
    """The API key, and a token the MCP server gets through `env: {SERVICE_TOKEN: ${…}}`, are redacted."""
    d, fake = env
    fake.enqueue(Reply(tool_calls=[ToolCall("echo", {"text": f"key={KEY}"}),
                                   ToolCall("env", {"name": "SERVICE_TOKEN"})]),
                 Reply(text=[f"done {KEY}"]))
    r = post(d, "agents-friday", "ask-openai", {"payload": {"question": "echo your key"}}, query="")
    view = wait_terminal(d, r.json()["sessionId"])
    echoed, token = view["agentBlocks"][0]["toolCalls"]
    assert echoed["args"] == {"text": "key=***"} and echoed["result"] == "key=***"
    assert token["result"] == "***"
    recorded = json.dumps(events_of(d, view["sessionId"]))
    assert KEY not in recorded and SERVICE_TOKEN not in recorded
    assert KEY not in d.log() and SERVICE_TOKEN not in d.log()


def test_cancelling_the_session_aborts_the_running_tool(env: tuple[DaemonProcess, FakeModels], tmp_path: Path) -> None:
    d, fake = env
    marker = str(tmp_path / "slow")
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 2}, id="quick")]),
                 Reply(tool_calls=[ToolCall("slow", {"seconds": 600, "marker": marker}, id="long")]))
    r = post(d, "agents-friday", "ask-anthropic", {"payload": {"question": "wait"}})
    assert r.status_code == 202, r.text
    sid = r.json()["sessionId"]
    wait_for(lambda: Path(marker + ".started").exists(), 30, what="the slow tool to start")
    cancelled = httpx.delete(f"{d.url}/api/sessions/{sid}", timeout=10)
    assert cancelled.status_code in (200, 202), cancelled.text
    view = wait_terminal(d, sid)
    assert view["status"] == "cancelled"
    [block] = view["agentBlocks"]
    assert block["status"] == "failed"
    # the record keeps the calls made before the cancel, the one cut short included
    quick, long = block["toolCalls"]
    assert quick["toolCallId"] == "quick" and quick["result"] == "4"
    assert long["toolCallId"] == "long" and long["error"].startswith("cancelled") and "result" not in long
    # the pooled server is still there for the next session
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), Reply(text=["2"]))
    again = post(d, "agents-friday", "ask-anthropic", {"payload": {"question": "1+1"}}, query="")
    assert wait_terminal(d, again.json()["sessionId"])["agentBlocks"][0]["toolCalls"][0]["result"] == "2"


def test_tools_route_lists_servers_and_their_tools(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, _ = env
    r = httpx.get(f"{d.url}/api/workspaces/agents-friday/tools", timeout=60)
    assert r.status_code == 200, r.text
    [server] = r.json()["servers"]
    assert server["id"] == "tools" and server["transport"] == "stdio" and server["status"] == "running"
    assert server["description"] == "The test tools server"
    add = next(tool for tool in server["tools"] if tool["name"] == "add")
    assert add["inputSchema"]["required"] == ["a", "b"]
    missing = httpx.get(f"{d.url}/api/workspaces/nope/tools", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "workspace_not_found"


def run_spawn(d: DaemonProcess, fake: FakeModels) -> tuple[int, int]:
    """One session that asks the MCP server for its pid and to start a grandchild; returns (server, grandchild)."""
    fake.enqueue(Reply(tool_calls=[ToolCall("pid", {}), ToolCall("spawn_child", {})]), Reply(text=["ok"]))
    r = post(d, "agents-friday", "ask-openai", {"payload": {"question": "spawn"}}, query="")
    view = wait_terminal(d, r.json()["sessionId"])
    server, child = (int(call["result"]) for call in view["agentBlocks"][0]["toolCalls"])
    assert alive(server) and alive(child)
    return server, child


def test_mcp_servers_never_outlive_the_daemon(tmp_path: Path) -> None:
    """Graceful stop kills the server's whole group; kill -9 kills the server at once (parent-death signal) and
    its children at the latest at the next start (the run directory's pid files)."""
    with fake_models() as fake:
        d = DaemonProcess(tmp_path / "home", [WORKSPACE], daemon_env(fake)).start()
        try:
            server, child = run_spawn(d, fake)
            assert d.stop() == 0
            wait_for(lambda: not alive(server) and not alive(child), 15, what="the MCP server tree to stop")

            d.start()
            server, child = run_spawn(d, fake)
            d.kill9()
            wait_for(lambda: not alive(server), 15, what="the MCP server to die with its daemon")
            assert alive(child), "a parent-death signal reaches only the direct child"
            assert session_members(server) == [child]
            d.start()  # the next start reaps what the killed daemon left
            wait_for(lambda: not alive(child), 15, what="the leftover grandchild to be stopped")
        finally:
            d.stop()
            with_leftovers = [pid for pid in session_members(server) if alive(pid)]
            for pid in with_leftovers:
                os.kill(pid, signal.SIGKILL)


def test_removing_the_workspace_stops_its_servers(tmp_path: Path) -> None:
    with fake_models() as fake:
        d = DaemonProcess(tmp_path / "home", [WORKSPACE], daemon_env(fake)).start()
        try:
            server, child = run_spawn(d, fake)
            r = httpx.delete(f"{d.url}/api/workspaces/agents-friday", timeout=30)
            assert r.status_code == 200, r.text
            wait_for(lambda: not alive(server) and not alive(child), 15, what="the workspace's servers to stop")
        finally:
            d.stop()


def test_one_pooled_server_serves_the_sessions_of_its_workspace(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, fake = env
    pids = set()
    for _ in range(3):
        fake.enqueue(Reply(tool_calls=[ToolCall("pid", {})]), Reply(text=["ok"]))
        r = post(d, "agents-friday", "ask-openai", {"payload": {"question": "pid"}}, query="")
        pids.add(wait_terminal(d, r.json()["sessionId"])["agentBlocks"][0]["toolCalls"][0]["result"])
    assert len(pids) == 1


def test_live_tool_chunks_match_the_published_schema(env: tuple[DaemonProcess, FakeModels], tmp_path: Path) -> None:
    """`tool-call` / `tool-result` chunks on the session stream are described by `/openapi.json`'s EphemeralChunk.

    The first call waits for a file the test writes once its stream is attached, so no chunk is missed."""
    d, fake = env
    doc = document(d)
    gate, mine = tmp_path / "gate", tmp_path / "mine"
    fake.enqueue(Reply(tool_calls=[ToolCall("rendezvous", {"mine": str(mine), "other": str(gate)})]),
                 Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})]), Reply(text=["3"]))
    r = post(d, "agents-friday", "ask-anthropic", {"payload": {"question": "gate"}})
    sid = r.json()["sessionId"]
    chunks: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{d.url}/api/sessions/{sid}/stream", timeout=60) as stream:
        name: str | None = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data = json.loads(line[len("data:"):])
                if name == "ephemeral":
                    chunks.append(data)
                    doc.check_component("EphemeralChunk", data)
                gate.touch()  # attached: let the first tool answer
            elif not line:
                if name == "end":
                    break
                name = None
    kinds = [(c["chunk"]["type"], c["chunk"].get("toolName")) for c in chunks if c["chunk"]["type"] != "text-delta"]
    assert kinds[-3:] == [("tool-result", "rendezvous"), ("tool-call", "add"), ("tool-result", "add")]


def test_a_key_streamed_in_two_pieces_never_reaches_a_live_viewer(env: tuple[DaemonProcess, FakeModels]) -> None:
    """The model streams the API key split across two text deltas, the second held back until the first has reached
    the session's live stream: the step's streamed text is redacted as one text, so neither piece shows the key, and
    the text before it is not held back."""
    d, fake = env
    gate = threading.Event()
    fake.enqueue(Reply(text=[f"Your key: {KEY[:10]}", f"{KEY[10:]} (keep it)."], gate=gate))
    sid = post(d, "agents-friday", "ask-openai", {"payload": {"question": "my key?"}}).json()["sessionId"]
    texts: list[str] = []
    with httpx.stream("GET", f"{d.url}/api/sessions/{sid}/stream", timeout=60) as stream:
        name: str | None = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:") and name == "ephemeral":
                chunk = json.loads(line[len("data:"):])["chunk"]
                if chunk["type"] == "text-delta":
                    texts.append(chunk["delta"])
                    gate.set()  # the first piece is out: now the rest
            elif not line:
                if name == "end":
                    break
                name = None
    assert texts[0] == "Your key: ", texts
    assert "".join(texts) == "Your key: *** (keep it).", texts
    assert wait_terminal(d, sid)["status"] == "completed"


def test_an_inline_llm_action_uses_tools_too(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, fake = env
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 5, "b": 6})]), Reply(text=["11"]))
    r = post(d, "agents-friday", "ask-inline", {"payload": {"question": "5+6?"}}, query="")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == {"llm:work": "11"}  # no outputTo: stored under llm:<stateId>
    view = wait_terminal(d, r.json()["sessionId"])
    [block] = view["agentBlocks"]
    assert block["actionType"] == "llm" and block["toolCalls"][0]["result"] == "11"
    assert fake.requests[-1].json["messages"][0] == {"role": "user", "content": "5+6?"}
