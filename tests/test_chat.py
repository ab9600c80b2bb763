"""Workspace chat (issue #17, items 2, 3, 5): a real atlasd (DaemonProcess: nats-server, HTTP, SQLite), the chat
agent talking to the scripted model server (`tests.fake_models`) in both wire formats: the `chat` workspace uses
the daemon's ATLAS_CHAT_PROVIDER (openai), its copy `chat-anthropic` a `chat:` block naming anthropic.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.chat.turn import ChatSettings, resolve_model
from atlas.cli.sse import parse_sse
from atlas.config.loader import load_workspace
from atlas.errors import AtlasError
from atlas.runtime.workspaces import compile_workspace
from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models

KEY = "sk-chat-test-0123456789abcdef"
WS = "chat"
WS_ANTHROPIC = "chat-anthropic"


def daemon_env(fake: FakeModels, **extra: str) -> dict[str, str]:
    return {"ATLAS_CHAT_PROVIDER": "openai", "ATLAS_CHAT_MODEL": "gpt-chat", "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": fake.openai_url, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.anthropic_url,
            **extra}


def anthropic_copy(root: Path) -> Path:
    """The chat fixture with another id and a `chat:` block: the Anthropic wire format, and a workspace prompt."""
    target = root / WS_ANTHROPIC
    target.mkdir(parents=True, exist_ok=True)
    text = (FIXTURES / "chat" / "workspace.yml").read_text().replace("id: chat\n", f"id: {WS_ANTHROPIC}\n")
    text += '\nchat: { provider: anthropic, model: claude-chat, prompt: "Always answer in haiku." }\n'
    (target / "workspace.yml").write_text(text)
    return target


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModels]:
    with fake_models() as server:
        yield server


@pytest.fixture(scope="module")
def daemon(fake: FakeModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("chat")
    proc = DaemonProcess(root / "home", [FIXTURES / "chat", anthropic_copy(root)], env=daemon_env(fake)).start()
    try:
        yield proc
    finally:
        proc.stop()


def post(url: str, ws: str, message: str, chat_id: str | None = None,
         headers: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """One turn: every SSE event of the reply, in order (the stream closes after `done`)."""
    body: dict[str, Any] = {"message": message}
    if chat_id is not None:
        body["chatId"] = chat_id
    with httpx.stream("POST", f"{url}/api/workspaces/{ws}/chat", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [(f.event, json.loads(f.data)) for f in parse_sse(resp.iter_lines())]


def named(events: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [data for event, data in events if event == name]


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"] for d in named(events, "text-delta"))


def system_of(request: Any) -> str:
    if request.format == "anthropic":
        system = request.json.get("system")
        return system if isinstance(system, str) else "".join(b.get("text", "") for b in system or [])
    first = request.json["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


def tool_results(request: Any) -> list[str]:
    """The tool results a model request carried, in either wire format."""
    out = []
    for message in request.json["messages"]:
        if request.format == "openai" and message["role"] == "tool":
            out.append(message["content"])
        if request.format == "anthropic" and message["role"] == "user" and isinstance(message["content"], list):
            out.extend(b["content"] if isinstance(b["content"], str) else json.dumps(b["content"])
                       for b in message["content"] if b.get("type") == "tool_result")
    return out


def get(url: str, path: str) -> Any:
    resp = httpx.get(url + path, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---------------------------------------------------------------- text, listing, reading


def test_a_text_turn_streams_is_recorded_listed_and_continued(daemon: DaemonProcess, fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["Hello", ", ", "Ada!"]))
    first = post(daemon.url, WS, "Hi there, I am Ada and this is a rather long first message to be cut")
    assert first[0][0] == "chat" and first[-1][0] == "done"
    [chat] = named(first, "chat")
    assert chat["title"] == "Hi there, I am Ada and this is a rather long first message t"  # 60 characters
    assert text_of(first) == "Hello, Ada!"
    [done] = named(first, "done")
    assert done["status"] == "completed"
    request = fake.requests[-1]
    assert request.format == "openai" and request.json["model"] == "gpt-chat"
    assert "Chat tests" in system_of(request)  # the built-in prompt names the workspace
    offered = {t["function"]["name"] for t in request.json["tools"]}
    assert {"greet", "slow", "save_memory_entry", "list_memory_entries", "delete_memory_entry"} <= offered
    assert "nightly" not in offered  # a schedule signal's job is no tool

    fake.enqueue(Reply(text=["Still ", "here."]))
    second = post(daemon.url, WS, "Are you there?", chat_id=chat["chatId"])
    assert named(second, "chat")[0]["chatId"] == chat["chatId"]
    history = fake.requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in history[1:]] == [
        ("user", "Hi there, I am Ada and this is a rather long first message to be cut"),
        ("assistant", "Hello, Ada!"), ("user", "Are you there?")]

    body = get(daemon.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")
    assert body["chatId"] == chat["chatId"] and body["title"] == chat["title"]
    assert [(m["role"], m["text"], m.get("status")) for m in body["messages"]] == [
        ("user", "Hi there, I am Ada and this is a rather long first message to be cut", None),
        ("assistant", "Hello, Ada!", "completed"), ("user", "Are you there?", None),
        ("assistant", "Still here.", "completed")]
    assert body["messages"][1]["id"] == done["messageId"]
    assert body["messages"][1]["turnId"] == chat["turnId"] == body["messages"][0]["turnId"]
    assert body["messages"][1]["correlationId"] == chat["correlationId"]

    listed = get(daemon.url, f"/api/workspaces/{WS}/chat")["chats"]
    mine = [c for c in listed if c["chatId"] == chat["chatId"]]
    assert mine == [{"chatId": chat["chatId"], "title": chat["title"], "createdAt": mine[0]["createdAt"],
                     "updatedAt": mine[0]["updatedAt"], "messageCount": 4}]
    assert listed == sorted(listed, key=lambda c: c["updatedAt"], reverse=True)

    # after the turn, the stream of the chat is the last reply's `done`
    with httpx.stream("GET", f"{daemon.url}/api/workspaces/{WS}/chat/{chat['chatId']}/stream", timeout=30) as resp:
        frames = [(f.event, json.loads(f.data)) for f in parse_sse(resp.iter_lines())]
    assert frames == [("done", {"messageId": body["messages"][3]["id"], "status": "completed"})]


def test_title_delete_and_errors(daemon: DaemonProcess, fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["ok"]))
    [chat] = named(post(daemon.url, WS, "to be renamed"), "chat")
    base = f"{daemon.url}/api/workspaces/{WS}/chat"
    resp = httpx.patch(f"{base}/{chat['chatId']}/title", json={"title": "  Renamed   chat "})
    assert resp.status_code == 200
    assert resp.json()["title"] == "Renamed chat" and resp.json()["chatId"] == chat["chatId"]
    assert get(daemon.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")["title"] == "Renamed chat"

    def error(resp: httpx.Response, status: int, code: str) -> None:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["code"] == code

    error(httpx.patch(f"{base}/{chat['chatId']}/title", json={"title": ""}), 400, "invalid_body")
    error(httpx.post(base, json={"message": ""}), 400, "invalid_body")
    error(httpx.post(base, json={"message": "hi", "extra": 1}), 400, "invalid_body")
    error(httpx.post(base, content=b"[1]", headers={"content-type": "application/json"}), 400, "invalid_body")
    error(httpx.post(base, json={"message": "hi", "chatId": "no-such-chat"}), 404, "chat_not_found")
    error(httpx.post(base, json={"message": "hi", "chatId": "bad.id*"}), 404, "chat_not_found")
    error(httpx.post(f"{daemon.url}/api/workspaces/nope/chat", json={"message": "hi"}), 404, "workspace_not_found")
    error(httpx.get(f"{base}/no-such-chat"), 404, "chat_not_found")
    error(httpx.get(f"{daemon.url}/api/workspaces/nope/chat"), 404, "workspace_not_found")

    assert httpx.delete(f"{base}/{chat['chatId']}").status_code == 204
    error(httpx.get(f"{base}/{chat['chatId']}"), 404, "chat_not_found")
    error(httpx.delete(f"{base}/{chat['chatId']}"), 404, "chat_not_found")
    assert chat["chatId"] not in [c["chatId"] for c in get(daemon.url, f"/api/workspaces/{WS}/chat")["chats"]]
    assert fake.pending == 0


def test_no_chat_model_is_chat_unavailable() -> None:
    ws = compile_workspace(load_workspace(FIXTURES / "chat"))
    with pytest.raises(AtlasError) as caught:
        resolve_model(ws, ChatSettings(provider=None, model=None, llm_base_url=None, job_wait_s=1), {})
    assert caught.value.code == "chat_unavailable" and "ATLAS_CHAT_MODEL" in caught.value.message
    with pytest.raises(AtlasError) as caught:  # a provider that needs a key, without one
        resolve_model(ws, ChatSettings(provider="openai", model="m", llm_base_url=None, job_wait_s=1), {})
    assert caught.value.code == "chat_unavailable" and "OPENAI_API_KEY" in caught.value.message


# ---------------------------------------------------------------- memory


def test_a_saved_memory_is_in_a_later_chats_system_prompt(daemon: DaemonProcess, fake: FakeModels) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("save_memory_entry", {"text": f"The launch code is {KEY}-blue"},
                                            id="mem-1")]),
                 Reply(text=["I will remember that."]))
    first = post(daemon.url, WS_ANTHROPIC, "Remember: the launch code is blue")
    assert fake.requests[-1].format == "anthropic"
    [call] = named(first, "tool-call")
    assert call["toolName"] == "save_memory_entry" and call["toolCallId"] == "mem-1"
    assert KEY not in json.dumps(first)  # the API key is a secret: redacted from the transcript
    [result] = named(first, "tool-result")
    assert not result.get("error"), result
    assert named(first, "done")[0]["status"] == "completed"

    fake.enqueue(Reply(text=["You asked me to remember the launch code."]))
    second = post(daemon.url, WS_ANTHROPIC, "What did I ask you to remember?")
    assert named(second, "chat")[0]["chatId"] != named(first, "chat")[0]["chatId"]
    system = system_of(fake.requests[-1])
    assert "launch code is" in system and "-blue" in system
    assert "Always answer in haiku." in system  # the workspace's `chat.prompt`
    entries = get(daemon.url, f"/api/workspaces/{WS_ANTHROPIC}/memory/notes")["entries"]
    assert any(e["source"].get("chatId") == named(first, "chat")[0]["chatId"] for e in entries)
    chat_body = get(daemon.url, f"/api/workspaces/{WS_ANTHROPIC}/chat/{named(first, 'chat')[0]['chatId']}")
    assert KEY not in json.dumps(chat_body)


# ---------------------------------------------------------------- jobs as tools


def test_a_turn_runs_a_job_and_answers_with_its_output(daemon: DaemonProcess, fake: FakeModels) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"name": "Ada"}, id="job-1")]), Reply(text=["Greeted Ada."]))
    events = post(daemon.url, WS, "Please greet Ada")
    [chat] = named(events, "chat")
    [result] = named(events, "tool-result")
    assert result["toolName"] == "greet" and not result.get("error")
    assert result["result"]["status"] == "completed" and result["result"]["output"]
    sessions = named(events, "session")
    assert [s["status"] for s in sessions] == ["queued", "completed"]
    sid = sessions[0]["sessionId"]
    assert {s["sessionId"] for s in sessions} == {sid} and sessions[0]["toolCallId"] == "job-1"
    assert sessions[0]["correlationId"] == chat["correlationId"] and sessions[0]["jobName"] == "greet"
    assert "Ada" in tool_results(fake.requests[-1])[0]  # the model got the run's output
    assert text_of(events) == "Greeted Ada."

    view = get(daemon.url, f"/api/sessions/{sid}")
    assert view["trigger"] == "chat" and view["correlationId"] == chat["correlationId"]
    assert view["chat"] == {"chatId": chat["chatId"], "turnId": chat["turnId"]}
    listed = get(daemon.url, f"/api/sessions?correlationId={chat['correlationId']}")
    summaries = listed["sessions"] if isinstance(listed, dict) else listed
    assert [s["sessionId"] for s in summaries] == [sid]
    assert summaries[0]["chat"] == {"chatId": chat["chatId"], "turnId": chat["turnId"]}
    reply = get(daemon.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")["messages"][1]
    assert reply["sessions"] == [{"sessionId": sid, "correlationId": chat["correlationId"], "jobName": "greet",
                                  "status": "completed"}]
    assert reply["toolCalls"][0]["toolCallId"] == "job-1" and reply["toolCalls"][0]["result"]["output"]


def test_a_payload_that_fails_validation_is_an_error_result_and_a_retry_succeeds(
    daemon: DaemonProcess, fake: FakeModels
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"nom": "Bob"}, id="bad-1")]),
                 Reply(tool_calls=[ToolCall("greet", {"name": "Bob"}, id="good-1")]),
                 Reply(text=["Done."]))
    events = post(daemon.url, WS_ANTHROPIC, "Greet Bob")
    bad, good = named(events, "tool-result")
    assert bad["error"] and bad["result"]["error"]["code"] == "payload_invalid"
    assert bad["result"]["error"]["details"]  # the 400's details: which field is wrong
    assert "payload_invalid" in tool_results(fake.requests[-2])[0]  # the model read the 400's error JSON
    assert not good.get("error") and good["result"]["status"] == "completed"
    assert [s["toolCallId"] for s in named(events, "session")] == ["good-1", "good-1"]  # the bad call started none
    assert named(events, "done")[0]["status"] == "completed"


def test_a_retried_turn_does_not_run_a_job_twice(daemon: DaemonProcess, fake: FakeModels) -> None:
    headers = {"Idempotency-Key": "turn-retry-1"}
    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"name": "Cy"}, id="retry-call")]),
                 Reply(status=400))  # the model fails after the job ran: the turn fails
    first = post(daemon.url, WS, "Greet Cy", headers=headers)
    assert named(first, "done")[0]["status"] == "failed"
    [started] = [s for s in named(first, "session") if s["status"] == "queued"]

    fake.enqueue(Reply(tool_calls=[ToolCall("greet", {"name": "Cy"}, id="retry-call")]), Reply(text=["Greeted."]))
    second = post(daemon.url, WS, "Greet Cy", headers=headers)  # the client retries the same turn
    assert named(second, "chat")[0]["chatId"] == named(first, "chat")[0]["chatId"]
    assert named(second, "chat")[0]["turnId"] == named(first, "chat")[0]["turnId"]
    assert {s["sessionId"] for s in named(second, "session")} == {started["sessionId"]}
    assert named(second, "done")[0]["status"] == "completed"
    listed = get(daemon.url, f"/api/sessions?correlationId={started['correlationId']}")
    summaries = listed["sessions"] if isinstance(listed, dict) else listed
    assert [s["sessionId"] for s in summaries] == [started["sessionId"]]  # one run, not two
    body = get(daemon.url, f"/api/workspaces/{WS}/chat/{named(first, 'chat')[0]['chatId']}")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "assistant"]  # the message once
    assert [m.get("status") for m in body["messages"][1:]] == ["failed", "completed"]


def test_a_job_that_outlives_the_bound(fake: FakeModels, tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "home", [FIXTURES / "chat"],
                         env=daemon_env(fake, ATLAS_CHAT_JOB_WAIT="1s")).start()
    gate = tmp_path / "gate"
    try:
        fake.enqueue(Reply(tool_calls=[ToolCall("slow", {"file": str(gate)}, id="slow-1")]),
                     Reply(text=["It is still running."]))
        events = post(proc.url, WS, "Run the slow job")
        [result] = named(events, "tool-result")
        assert result["result"]["stillRunning"] is True and result["result"]["status"] in ("queued", "active")
        sid = result["result"]["sessionId"]
        assert named(events, "session")[-1]["status"] in ("queued", "active")
        assert named(events, "done")[0]["status"] == "completed"
        assert sid in tool_results(fake.requests[-1])[0]
        assert get(proc.url, f"/api/sessions/{sid}")["status"] in ("queued", "active")  # it keeps running
        gate.write_text("go")
        wait_for(lambda: get(proc.url, f"/api/sessions/{sid}")["status"] == "completed", what="the slow run's end")
    finally:
        gate.write_text("go")
        proc.stop()


# ---------------------------------------------------------------- streams, busy chats, concurrency


def test_stream_resume_and_a_busy_chat(daemon: DaemonProcess, fake: FakeModels, tmp_path: Path) -> None:
    gate = threading.Event()
    fake.enqueue(Reply(text=["Part one, ", "part two."], gate=gate))
    base = f"{daemon.url}/api/workspaces/{WS}/chat"
    with httpx.stream("POST", base, json={"message": "Tell me in two parts"}, timeout=60) as resp:
        frames = parse_sse(resp.iter_lines())
        first = next(frames)
        assert first.event == "chat"
        chat = json.loads(first.data)
        second = next(frames)
        assert (second.event, json.loads(second.data)) == ("text-delta", {"delta": "Part one, "})
        busy = httpx.post(base, json={"message": "again", "chatId": chat["chatId"]})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "chat_busy"
        partial = get(daemon.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")["messages"][-1]
        assert partial["status"] == "streaming" and partial["text"] == "Part one, "
        # another client (or the same after a reconnect) resumes the turn from its start
        with httpx.stream("GET", f"{base}/{chat['chatId']}/stream", timeout=60) as resumed:
            again = parse_sse(resumed.iter_lines())
            assert [(f.event, json.loads(f.data)) for f in (next(again), next(again))] == [
                ("chat", chat), ("text-delta", {"delta": "Part one, "})]
            gate.set()
            rest = [(f.event, json.loads(f.data)) for f in again]
        original_rest = [(f.event, json.loads(f.data)) for f in frames]
    assert rest == original_rest
    assert rest[0] == ("text-delta", {"delta": "part two."}) and rest[-1][0] == "done"
    assert rest[-1][1]["status"] == "completed"


def test_a_secret_streamed_in_two_pieces_is_redacted(daemon: DaemonProcess, fake: FakeModels) -> None:
    """The model streams the API key split across two deltas, the second held back until the first is recorded:
    the recorder redacts the streamed text as one text, so neither the live stream nor the kept chat has the key,
    and the text before the key's first characters is not held back."""
    gate = threading.Event()
    fake.enqueue(Reply(text=[f"The key is {KEY[:12]}", f"{KEY[12:]}, keep it."], gate=gate))
    with httpx.stream("POST", f"{daemon.url}/api/workspaces/{WS}/chat", json={"message": "Leak it"},
                      timeout=60) as resp:
        frames = parse_sse(resp.iter_lines())
        chat = json.loads(next(frames).data)
        first = next(frames)
        assert (first.event, json.loads(first.data)) == ("text-delta", {"delta": "The key is "})
        gate.set()
        rest = [(f.event, json.loads(f.data)) for f in frames]
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "completed"
    streamed = "The key is " + text_of(rest)
    assert streamed == "The key is ***, keep it.", streamed
    kept = get(daemon.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")
    assert KEY not in json.dumps(kept) and KEY[:12] not in json.dumps(kept)
    assert kept["messages"][-1]["text"] == "The key is ***, keep it."


def test_many_concurrent_turns_in_different_chats(daemon: DaemonProcess, fake: FakeModels) -> None:
    count = 12
    answers = [f"Answer number {i}." for i in range(count)]
    fake.enqueue(*(Reply(text=[a[:7], a[7:]]) for a in answers))
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda i: post(daemon.url, WS, f"question {i}"), range(count)))
    chat_ids = {named(events, "chat")[0]["chatId"] for events in results}
    assert len(chat_ids) == count
    streamed = sorted(text_of(events) for events in results)
    assert streamed == sorted(answers)  # every scripted answer went to exactly one chat
    for i, events in enumerate(results):
        assert named(events, "done")[0]["status"] == "completed"
        body = get(daemon.url, f"/api/workspaces/{WS}/chat/{named(events, 'chat')[0]['chatId']}")
        assert [(m["role"], m["text"]) for m in body["messages"]] == [
            ("user", f"question {i}"), ("assistant", text_of(events))]


# ---------------------------------------------------------------- the CLI


def test_cli_one_shot_message_json(daemon: DaemonProcess, fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["From ", "the CLI."]))
    out = subprocess.run([ATLAS, "chat", "-w", WS, "--message", "hello from the CLI", "--json", "--url", daemon.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines[0]["event"] == "chat" and lines[-1]["event"] == "done"
    assert "".join(line["data"]["delta"] for line in lines if line["event"] == "text-delta") == "From the CLI."
    fake.enqueue(Reply(text=["Again."]))
    out = subprocess.run([ATLAS, "chat", "-w", WS, "--chat", lines[0]["data"]["chatId"], "--message", "more",
                          "--url", daemon.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Again." in out.stdout


def test_kill_during_a_turn_keeps_finished_messages_and_interrupts_the_reply(fake: FakeModels,
                                                                               tmp_path: Path) -> None:
    home = tmp_path / "home"
    ws = tmp_path / "ws"
    shutil.copytree(FIXTURES / "chat", ws)
    proc = DaemonProcess(home, [ws], env=daemon_env(fake)).start()
    gate = threading.Event()
    try:
        fake.enqueue(Reply(text=["All good."]))
        [chat] = named(post(proc.url, WS, "first"), "chat")
        fake.enqueue(Reply(text=["Half ", "never sent"], gate=gate))
        base = f"{proc.url}/api/workspaces/{WS}/chat"
        with httpx.stream("POST", base, json={"message": "second", "chatId": chat["chatId"]}, timeout=60) as resp:
            frames = parse_sse(resp.iter_lines())
            assert [next(frames).event, next(frames).event] == ["chat", "text-delta"]
            proc.kill9()
        proc.start()
        body = get(proc.url, f"/api/workspaces/{WS}/chat/{chat['chatId']}")
        assert [(m["role"], m["text"], m.get("status")) for m in body["messages"]] == [
            ("user", "first", None), ("assistant", "All good.", "completed"), ("user", "second", None),
            ("assistant", "Half ", "interrupted")]
        assert body["messages"][-1]["error"]
        # the chat takes new turns again
        fake.enqueue(Reply(text=["Back."]))
        third = post(proc.url, WS, "third", chat_id=chat["chatId"])
        assert text_of(third) == "Back." and named(third, "done")[0]["status"] == "completed"
    finally:
        gate.set()
        proc.stop()
