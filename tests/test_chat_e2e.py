"""Chat end to end (issue #17, "Done when" and item 5): the reference's knowledge-base example driven through chat,
and the interactive `atlas chat -w WS` loop.

Real parts: one atlasd per wire format (DaemonProcess: nats-server, HTTP, SQLite) loading `examples/knowledge-base`
as it ships (no agents, no jobs: chat plus a `notes` memory corpus) and the `chat` fixture (jobs as tools); the
chat model is the scripted model server (`tests.fake_models`), in the OpenAI or the Anthropic wire format as the
daemon's ATLAS_CHAT_PROVIDER says; the CLI is the installed `atlas` in a child process fed through its stdin.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from typing import IO, Any

import httpx
import pytest

from atlas.cli.sse import parse_sse
from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess, wait_for
from tests.fake_models import FakeModels, Recorded, Reply, ToolCall, fake_models
from tests.test_chat import daemon_env, get, named, post, system_of, text_of, tool_results

KB = "knowledge-base"
EXAMPLE = FIXTURES.parent.parent / "examples" / KB
MODELS = {"openai": "gpt-chat", "anthropic": "claude-chat"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModels]:
    with fake_models() as server:
        yield server


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def kb(request: pytest.FixtureRequest, fake: FakeModels,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon whose chat model speaks `request.param`'s wire format, with the example and the chat fixture."""
    fmt = str(request.param)
    env = daemon_env(fake, ATLAS_CHAT_PROVIDER=fmt, ATLAS_CHAT_MODEL=MODELS[fmt])
    proc = DaemonProcess(tmp_path_factory.mktemp(f"kb-{fmt}") / "home", [EXAMPLE, FIXTURES / "chat"], env=env).start()
    try:
        yield proc, fmt
    finally:
        proc.stop()


def offered(request: Recorded) -> set[str]:
    tools = request.json.get("tools") or []
    return {t["function"]["name"] if request.format == "openai" else t["name"] for t in tools}


def conversation(request: Recorded) -> list[tuple[str, str]]:
    """The (role, text) of the turns a model request carried, its system prompt left out (either wire format)."""
    out = []
    for message in request.json["messages"]:
        if message["role"] == "system":
            continue
        content = message["content"]
        text = content if isinstance(content, str) else "".join(
            b.get("text", "") for b in content if isinstance(b, dict))
        out.append((message["role"], text))
    return out


# ---------------------------------------------------------------- the knowledge-base example


def test_the_knowledge_base_example_remembers_across_chats(kb: tuple[DaemonProcess, str], fake: FakeModels) -> None:
    d, fmt = kb
    fake.enqueue(Reply(tool_calls=[ToolCall("save_memory_entry", {"text": "The staging database is db-7."},
                                            id="kb-save")]),
                 Reply(text=["Saved: ", "the staging database is db-7."]))
    first = post(d.url, KB, "remember that the staging database is db-7")
    [chat1] = named(first, "chat")
    asked, answered = fake.requests[-2:]
    assert asked.format == answered.format == fmt and asked.json["model"] == MODELS[fmt]
    assert {"save_memory_entry", "list_memory_entries", "delete_memory_entry"} <= offered(asked)
    assert "You keep this workspace's notes" in system_of(asked)  # the example's `chat.prompt`
    assert "staging" not in system_of(asked)  # nothing remembered yet
    [call] = named(first, "tool-call")
    assert call["toolName"] == "save_memory_entry" and call["toolCallId"] == "kb-save"
    [result] = named(first, "tool-result")
    assert not result.get("error"), result
    assert result["result"]["memoryName"] == "notes"  # the example's only long_term corpus, by default
    assert text_of(first) == "Saved: the staging database is db-7."
    assert named(first, "done")[0]["status"] == "completed"

    [entry] = get(d.url, f"/api/workspaces/{KB}/memory/notes")["entries"]
    assert entry["text"] == "The staging database is db-7." and entry["source"] == {"chatId": chat1["chatId"]}
    assert entry["id"] == result["result"]["entry"]["id"] and entry["id"] in tool_results(answered)[0]

    fake.enqueue(Reply(text=["You asked me to remember ", "that the staging database is db-7."]))
    second = post(d.url, KB, "what did I ask you to remember?")
    [chat2] = named(second, "chat")
    assert chat2["chatId"] != chat1["chatId"]
    recall = fake.requests[-1]
    assert recall.format == fmt
    # A new chat: the request carries nothing of chat 1 but the memory in its system prompt.
    assert conversation(recall) == [("user", "what did I ask you to remember?")]
    system = system_of(recall)
    assert "# Workspace memory" in system and "## notes" in system
    assert "- The staging database is db-7. (saved " in system
    answer = "You asked me to remember that the staging database is db-7."
    assert text_of(second) == answer and named(second, "done")[0]["status"] == "completed"
    body = get(d.url, f"/api/workspaces/{KB}/chat/{chat2['chatId']}")
    assert [(m["role"], m["text"], m.get("status")) for m in body["messages"]] == [
        ("user", "what did I ask you to remember?", None), ("assistant", answer, "completed")]
    assert fake.pending == 0


# ---------------------------------------------------------------- the interactive CLI


class _Collected:
    """A child's output stream read in a thread as it comes (the test waits on what it has seen so far)."""

    def __init__(self, stream: IO[str]) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        while True:
            chunk = stream.read(1)
            if not chunk:
                return
            with self._lock:
                self._parts.append(chunk)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def test_the_interactive_cli_loop_streams_replies_and_shows_tool_calls_as_they_happen(
    kb: tuple[DaemonProcess, str], fake: FakeModels
) -> None:
    d, _ = kb
    gate = threading.Event()
    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"name": "Ada"}, id="cli-greet")]),
                 Reply(text=["Greeted ", "Ada, done."], gate=gate),
                 Reply(text=["Bye ", "now."]))
    proc = subprocess.Popen([ATLAS, "chat", "-w", "chat", "--url", d.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = _Collected(proc.stdout), _Collected(proc.stderr)
    try:
        proc.stdin.write("Please greet Ada\nThanks, bye\n")  # two messages, then EOF
        proc.stdin.close()
        # The tool call, its result and the run it started are printed while the reply is still being written.
        wait_for(lambda: "Greeted " in out.text, 60, what="the first words of the reply after the tool call")
        shown = out.text
        assert "Ada, done." not in shown and "Bye" not in shown
        assert re.search(r"→ greet\(.*Ada.*\)", shown), shown
        assert re.search(r"✓ greet: .*completed", shown), shown
        assert re.search(r"run greet [0-9a-f-]{36}: completed", shown), shown
        assert shown.index("→ greet(") < shown.index("✓ greet") < shown.index("Greeted ")
        gate.set()
        code = proc.wait(timeout=120)
        assert code == 0, (out.join(), err.join())
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stdout, stderr = out.join(), err.join()
    assert stdout.index("Greeted Ada, done.") < stdout.index("Bye now.")
    assert stdout.count("you> ") == 3  # two messages, then the prompt that read EOF
    [chat_id] = set(re.findall(r"\(chat ([0-9a-f-]{36}): continue it later with --chat \1\)", stderr))

    body: dict[str, Any] = get(d.url, f"/api/workspaces/chat/chat/{chat_id}")
    assert [(m["role"], m["text"], m.get("status")) for m in body["messages"]] == [
        ("user", "Please greet Ada", None), ("assistant", "Greeted Ada, done.", "completed"),
        ("user", "Thanks, bye", None), ("assistant", "Bye now.", "completed")]
    assert body["messages"][1]["toolCalls"][0]["toolName"] == "greet"
    # The second message continued the same chat: the model saw the first turn.
    assert conversation(fake.requests[-1])[0] == ("user", "Please greet Ada")
    assert conversation(fake.requests[-1])[-1] == ("user", "Thanks, bye")
    assert fake.pending == 0


# ---------------------------------------------------------------- `done` means the chat is free


def test_the_next_message_may_be_sent_the_moment_done_arrives(kb: tuple[DaemonProcess, str], fake: FakeModels) -> None:
    """Many chats at once, each sending its next message as soon as its reply's `done` is read: never `chat_busy`,
    and the listing read right after `done` counts the reply."""
    d, _ = kb
    chats, turns = 12, 3
    fake.enqueue(*(Reply(text=["ok"]) for _ in range(chats * turns)))

    def converse(n: int) -> list[int]:
        chat_id: str | None = None
        counts = []
        for t in range(turns):
            body: dict[str, Any] = {"message": f"chat {n} turn {t}", **({"chatId": chat_id} if chat_id else {})}
            with httpx.stream("POST", f"{d.url}/api/workspaces/chat/chat", json=body, timeout=60) as resp:
                assert resp.status_code == 200, resp.read()
                events = [(f.event, json.loads(f.data)) for f in parse_sse(resp.iter_lines())]
            assert events[-1][0] == "done" and events[-1][1]["status"] == "completed", events
            chat_id = events[0][1]["chatId"]
            [mine] = [c for c in get(d.url, "/api/workspaces/chat/chat")["chats"] if c["chatId"] == chat_id]
            counts.append(mine["messageCount"])
        return counts

    with concurrent.futures.ThreadPoolExecutor(chats) as pool:
        results = list(pool.map(converse, range(chats)))
    assert results == [[2, 4, 6]] * chats
