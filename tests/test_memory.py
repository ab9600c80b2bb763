"""Workspace memory (issue #17, item 1) against real parts: a real atlasd (nats-server, HTTP), the scripted model
server of `tests.fake_models` for the llm agent, the `atlas` CLI as a subprocess.

Pinned here: an llm agent whose `tools:` names `save_memory_entry` is offered it (and only the memory tools it
names), saves through it with its session as source and secrets redacted, and the entry is listed by the API
(newest first, with counts per corpus); the routes' errors (unknown workspace, undeclared corpus with the declared
names, unknown entry, a bad limit, an entry id that is a subject wildcard); `atlas memory list|rm`; the entries
survive a daemon restart (they are on the bus, not in the daemon).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models
from tests.test_api_core import assert_error, post, wait_terminal

KEY = "sk-test-memory-0123456789abcdef"
WS = "memws"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    with fake_models() as fake:
        d = DaemonProcess(tmp_path_factory.mktemp("memory-home"), [FIXTURES / "memory", FIXTURES / "core"],
                          {"OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": KEY}).start()
        try:
            yield d, fake
        finally:
            d.stop()


def memory(d: DaemonProcess, path: str = "", **params: Any) -> httpx.Response:
    return httpx.get(f"{d.url}/api/workspaces/{WS}/memory{path}", params=params, timeout=30)


def entries(d: DaemonProcess, corpus: str = "notes", **params: Any) -> list[dict[str, Any]]:
    r = memory(d, f"/{corpus}", **params)
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


def remember(d: DaemonProcess, fake: FakeModels, text: str, call_id: str) -> dict[str, Any]:
    """One run of the `remember` job whose model saves `text` with save_memory_entry; its finished view."""
    fake.enqueue(Reply(tool_calls=[ToolCall("save_memory_entry", {"text": text}, id=call_id)]),
                 Reply(text=["Saved."]))
    r = post(d, WS, "remember", {"payload": {"fact": text}}, query="")
    assert r.status_code == 200, r.text
    view = wait_terminal(d, r.json()["sessionId"])
    assert view["status"] == "completed", view
    return view


def cli(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ATLAS, "memory", *args, "--url", d.url], capture_output=True, text=True, timeout=60)


def test_an_llm_agent_saves_a_memory_entry_that_the_api_lists(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, fake = env
    assert memory(d).json() == {"corpora": [
        {"name": "notes", "type": "long_term", "strategy": "narrative", "count": 0},
        {"name": "scratch", "type": "short_term", "strategy": "narrative", "count": 0}]}
    before = len(fake.requests)
    view = remember(d, fake, f"The staging database is db-7 (its key is {KEY})", "m1")
    first = fake.requests[before]
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in first.json["tools"]}
    assert set(offered) == {"save_memory_entry", "list_memory_entries"}  # what `tools:` names, nothing more
    assert offered["save_memory_entry"]["required"] == ["text"]
    assert offered["save_memory_entry"]["additionalProperties"] is False
    [block] = view["agentBlocks"]
    [call] = block["toolCalls"]
    assert (call["toolName"], call["server"], call.get("error")) == ("save_memory_entry", "memory", None)
    assert call["result"]["memoryName"] == "notes"  # the first long_term corpus, by default

    [entry] = entries(d)
    assert entry["text"] == "The staging database is db-7 (its key is ***)"  # the API key never reaches memory
    assert entry["source"] == {"sessionId": view["sessionId"]}
    assert entry["id"] == call["result"]["entry"]["id"] and entry["createdAt"]
    assert KEY not in memory(d, "/notes").text
    counts = {c["name"]: c["count"] for c in memory(d).json()["corpora"]}
    assert counts == {"notes": 1, "scratch": 0}

    later = remember(d, fake, "Deploys happen on Tuesdays", "m2")
    listed = entries(d)
    assert [e["text"] for e in listed] == ["Deploys happen on Tuesdays", entry["text"]]  # newest first
    assert listed[0]["source"] == {"sessionId": later["sessionId"]}
    assert [e["text"] for e in entries(d, query="STAGING")] == [entry["text"]]  # case-insensitive
    assert [e["text"] for e in entries(d, limit=1)] == ["Deploys happen on Tuesdays"]


def test_the_memory_routes_answer_json_errors(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, _ = env
    assert_error(httpx.get(f"{d.url}/api/workspaces/nope/memory", timeout=30), 404, "workspace_not_found")
    assert_error(httpx.get(f"{d.url}/api/workspaces/nope/memory/notes", timeout=30), 404, "workspace_not_found")
    err = assert_error(memory(d, "/diary"), 404, "memory_not_found")
    assert err["details"] == {"declared": ["notes", "scratch"]}
    assert "notes, scratch" in err["message"]
    # A workspace without `memory:` declares nothing.
    assert httpx.get(f"{d.url}/api/workspaces/core/memory", timeout=30).json() == {"corpora": []}
    err = assert_error(httpx.get(f"{d.url}/api/workspaces/core/memory/notes", timeout=30), 404, "memory_not_found")
    assert err["details"] == {"declared": []}
    for bad in ("0", "1001", "x", "-1"):
        err = assert_error(memory(d, "/notes", limit=bad), 400, "invalid_query")
        assert err["details"] == [{"path": "limit", "message": "limit must be an integer from 1 to 1000"}]
    base = f"{d.url}/api/workspaces/{WS}/memory"
    assert_error(httpx.delete(f"{base}/notes/00000000-0000-4000-8000-000000000000", timeout=30), 404,
                 "memory_entry_not_found")
    assert_error(httpx.delete(f"{base}/diary/x", timeout=30), 404, "memory_not_found")
    held = entries(d)
    # Subject wildcards in an id are refused before they reach the bus (a purge of `*` would empty the corpus).
    for wildcard in ("%2A", "%3E", "a.b"):
        assert_error(httpx.delete(f"{base}/notes/{wildcard}", timeout=30), 404, "memory_entry_not_found")
    assert entries(d) == held


def test_the_cli_lists_corpora_and_entries_and_removes_one(env: tuple[DaemonProcess, FakeModels]) -> None:
    d, fake = env
    remember(d, fake, "The on-call phone is in the red drawer", "m3")
    listed = cli(d, "list", "-w", WS, "--json")
    assert listed.returncode == 0, listed.stderr
    corpora = {c["name"]: c for c in json.loads(listed.stdout)["corpora"]}
    assert corpora["notes"]["count"] == len(entries(d)) and corpora["scratch"]["count"] == 0
    table = cli(d, "list", "-w", WS)
    assert table.returncode == 0 and "notes" in table.stdout and "long_term" in table.stdout

    found = cli(d, "list", "-w", WS, "notes", "--query", "red drawer", "--json")
    assert found.returncode == 0, found.stderr
    [entry] = json.loads(found.stdout)["entries"]
    assert entry["text"] == "The on-call phone is in the red drawer"
    plain = cli(d, "list", "-w", WS, "notes", "-q", "red drawer")
    assert entry["id"] in plain.stdout and "red drawer" in plain.stdout

    removed = cli(d, "rm", "-w", WS, "notes", entry["id"])
    assert removed.returncode == 0, removed.stderr
    assert entry["id"] not in [e["id"] for e in entries(d)]
    again = cli(d, "rm", "-w", WS, "notes", entry["id"], "--json")
    assert again.returncode != 0
    assert json.loads(again.stdout)["error"]["code"] == "memory_entry_not_found"
    undeclared = cli(d, "list", "-w", WS, "diary")
    assert undeclared.returncode != 0 and "memory_not_found" in undeclared.stderr


def test_entries_survive_a_daemon_restart(env: tuple[DaemonProcess, FakeModels]) -> None:
    """Last in this module: it restarts the module's daemon."""
    d, _ = env
    held = entries(d)
    assert held
    assert d.stop() == 0
    d.start()
    assert entries(d) == held
    assert {c["name"]: c["count"] for c in memory(d).json()["corpora"]}["notes"] == len(held)
