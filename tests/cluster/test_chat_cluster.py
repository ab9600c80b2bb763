"""Chats and memory work on any daemon of a cluster (issue #17, item 2).

Real parts: a 3-node nats-server cluster and two atlasd processes on it, both with the scripted model server
(`tests.fake_models`) as their chat model. A chat lives on the bus (the CHATS stream and the CHAT_INDEX bucket),
memory in the MEMORY bucket: whatever one daemon writes, the other reads on the first try, follows while it is
written, and respects (one turn at a time per chat, on every daemon).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from atlas.bus.chatlog import CHATS, chat_subject
from atlas.cli.sse import parse_sse
from tests.cluster.conftest import stop_all
from tests.cluster.harness import ClusterDaemon, NatsCluster, http
from tests.daemon_proc import FIXTURES, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models
from tests.test_chat import daemon_env, named, post, text_of

pytestmark = pytest.mark.cluster

WS = "chat"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModels]:
    with fake_models() as server:
        yield server


@pytest.fixture(scope="module")
def pair(fake: FakeModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterDaemon, ClusterDaemon]]:
    """One cluster and two daemons with the chat fixture, shared by this module's tests (each uses its own chats)."""
    root = tmp_path_factory.mktemp("chat-cluster")
    cluster = NatsCluster(root / "nats").start()
    ds = [ClusterDaemon(root / f"d{i + 1}", [FIXTURES / "chat"], cluster, daemon_env(fake)) for i in range(2)]
    try:
        for d in ds:
            d.spawn()
        for d in ds:
            d.wait_started()
        yield ds[0], ds[1]
        codes = stop_all(ds)
        assert codes == [0, 0], [d.log() for d in ds]
    finally:
        stop_all(ds)
        cluster.stop()


def get(d: ClusterDaemon, path: str) -> Any:
    r = http.get(d.url + path, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def listed(d: ClusterDaemon, correlation_id: str) -> list[tuple[str, str]]:
    return [(s["sessionId"], s["status"]) for s in get(d, f"/api/sessions?correlationId={correlation_id}")["sessions"]]


def frames(resp: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    return ((f.event, json.loads(f.data)) for f in parse_sse(resp.iter_lines()))


@contextmanager
def reply_held(d: ClusterDaemon, fake: FakeModels, message: str, first: str,
               rest: str) -> Iterator[tuple[threading.Event, Iterator[tuple[str, dict[str, Any]]], list[Any]]]:
    """A chat turn on `d` whose reply the model holds after its `first` piece: the gate that lets `rest` go, the
    reply's frames, and the two read so far (`chat`, then the first text-delta). The gate opens at the end anyway."""
    gate = threading.Event()
    fake.enqueue(Reply(text=[first, rest], gate=gate))
    try:
        with httpx.stream("POST", f"{d.url}/api/workspaces/{WS}/chat", json={"message": message},
                          timeout=60) as resp:
            assert resp.status_code == 200
            replies = frames(resp)
            started = [next(replies), next(replies)]
            assert started[0][0] == "chat" and started[1] == ("text-delta", {"delta": first})
            yield gate, replies, started
    finally:
        gate.set()


def test_a_turn_on_one_daemon_is_listed_and_read_on_the_other_at_once(
    pair: tuple[ClusterDaemon, ClusterDaemon], fake: FakeModels
) -> None:
    """Many chats at once, each read on the other daemon right after its reply's `done` (no polling, no settling
    time), and continued there at once."""
    d1, d2 = pair
    count = 12
    fake.enqueue(*(Reply(text=["The same", " answer."]) for _ in range(2 * count)))

    def converse(i: int) -> None:
        writer, reader = (d1, d2) if i % 2 == 0 else (d2, d1)
        question = f"Question {i} on {writer.name}"
        events = post(writer.url, WS, question)
        [chat] = named(events, "chat")
        assert named(events, "done")[0]["status"] == "completed"
        chats = get(reader, f"/api/workspaces/{WS}/chat")["chats"]
        [mine] = [c for c in chats if c["chatId"] == chat["chatId"]]
        assert mine["title"] == question and mine["messageCount"] == 2, mine
        body = get(reader, f"/api/workspaces/{WS}/chat/{chat['chatId']}")
        assert [(m["role"], m["text"], m.get("status")) for m in body["messages"]] == [
            ("user", question, None), ("assistant", "The same answer.", "completed")]
        # and the other daemon continues it
        more = post(reader.url, WS, f"And then? ({i})", chat_id=chat["chatId"])
        assert text_of(more) == "The same answer." and named(more, "done")[0]["status"] == "completed"
        assert len(get(writer, f"/api/workspaces/{WS}/chat/{chat['chatId']}")["messages"]) == 4

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(converse, range(count)))
    for i in range(count):  # each continuation sent its chat's history
        [request] = [r for r in fake.requests if r.json["messages"][-1]["content"] == f"And then? ({i})"]
        assert [(m["role"], m["content"]) for m in request.json["messages"][1:]] == [
            ("user", f"Question {i} on {'d1' if i % 2 == 0 else 'd2'}"), ("assistant", "The same answer."),
            ("user", f"And then? ({i})")]


def test_a_reply_in_progress_is_followed_on_the_other_daemon_which_refuses_a_second_turn(
    pair: tuple[ClusterDaemon, ClusterDaemon], fake: FakeModels
) -> None:
    d1, d2 = pair
    with reply_held(d1, fake, "Take your time", "Held ", "until released.") as (gate, original, started):
        chat = started[0][1]
        busy = http.post(f"{d2.url}/api/workspaces/{WS}/chat", json={"message": "me too", "chatId": chat["chatId"]},
                         timeout=30)
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"]["code"] == "chat_busy"
        assert busy.json()["error"]["details"]["turnId"] == chat["turnId"]
        partial = get(d2, f"/api/workspaces/{WS}/chat/{chat['chatId']}")["messages"]
        assert [(m["role"], m["text"], m.get("status")) for m in partial] == [
            ("user", "Take your time", None), ("assistant", "Held ", "streaming")]

        with httpx.stream("GET", f"{d2.url}/api/workspaces/{WS}/chat/{chat['chatId']}/stream",
                          timeout=60) as resumed:
            assert resumed.status_code == 200
            followed = frames(resumed)
            assert [next(followed), next(followed)] == started  # replayed from the turn's start
            gate.set()
            rest_on_d2 = list(followed)
        rest_on_d1 = list(original)
    assert rest_on_d2 == rest_on_d1
    assert rest_on_d1[0] == ("text-delta", {"delta": "until released."})
    assert rest_on_d1[-1][0] == "done" and rest_on_d1[-1][1]["status"] == "completed"
    assert [e for e, _ in rest_on_d1].count("done") == 1

    # The turn is over everywhere: the other daemon takes the next one.
    fake.enqueue(Reply(text=["Now it is my turn."]))
    second = post(d2.url, WS, "me too", chat_id=chat["chatId"])
    assert named(second, "done")[0]["status"] == "completed"
    body = get(d1, f"/api/workspaces/{WS}/chat/{chat['chatId']}")
    assert [(m["role"], m["text"]) for m in body["messages"]] == [
        ("user", "Take your time"), ("assistant", "Held until released."), ("user", "me too"),
        ("assistant", "Now it is my turn.")]


def test_a_memory_entry_saved_through_one_daemon_is_listed_and_recalled_by_the_other(
    pair: tuple[ClusterDaemon, ClusterDaemon], fake: FakeModels
) -> None:
    d1, d2 = pair
    fake.enqueue(Reply(tool_calls=[ToolCall("save_memory_entry", {"text": "The staging database is db-7."},
                                            id="cluster-mem")]),
                 Reply(text=["Saved."]))
    saved = post(d1.url, WS, "Remember that the staging database is db-7")
    [result] = named(saved, "tool-result")
    assert not result.get("error"), result
    entry_id = result["result"]["entry"]["id"]
    chat_id = named(saved, "chat")[0]["chatId"]

    entries = get(d2, f"/api/workspaces/{WS}/memory/notes")["entries"]
    [entry] = [e for e in entries if e["id"] == entry_id]
    assert entry["text"] == "The staging database is db-7." and entry["source"] == {"chatId": chat_id}

    # A new chat on the other daemon has it in its system prompt.
    fake.enqueue(Reply(text=["db-7."]))
    recalled = post(d2.url, WS, "Which is the staging database?")
    assert text_of(recalled) == "db-7."
    request = fake.requests[-1].json["messages"]
    assert request[0]["role"] == "system" and "The staging database is db-7." in request[0]["content"]

    # Deleted through the other daemon: gone for both.
    assert http.delete(f"{d2.url}/api/workspaces/{WS}/memory/notes/{entry_id}", timeout=30).status_code == 204
    assert entry_id not in [e["id"] for e in get(d1, f"/api/workspaces/{WS}/memory/notes")["entries"]]


def test_a_job_tool_waits_for_a_run_whichever_daemon_runs_it(
    pair: tuple[ClusterDaemon, ClusterDaemon], fake: FakeModels
) -> None:
    """The job a turn starts may run on either daemon; the turn on d1 waits for its end and answers its output, and
    the run is found from both daemons by the turn's correlationId."""
    d1, d2 = pair
    replies = []
    for i in range(4):
        replies += [Reply(tool_calls=[ToolCall("greet", {"name": f"Node{i}"}, id=f"cluster-job-{i}")]),
                    Reply(text=[f"Greeted Node{i}."])]
    fake.enqueue(*replies)
    for i in range(4):
        events = post(d1.url, WS, f"Greet Node{i}")
        [chat] = named(events, "chat")
        [result] = named(events, "tool-result")
        assert not result.get("error") and result["result"]["status"] == "completed", result
        assert f"Node{i}" in json.dumps(result["result"]["output"])
        sid = named(events, "session")[0]["sessionId"]
        for d in (d1, d2):  # each daemon's read model follows the log: polled, not at once
            wait_for(lambda d=d, cid=chat["correlationId"], sid=sid: listed(d, cid) == [(sid, "completed")], 30,
                     what=f"the run listed on {d.name}")
        assert text_of(events) == f"Greeted Node{i}."


def chat_records_left(d: ClusterDaemon, chat_id: str) -> bool:
    """Whether the CHATS stream still holds any record of the chat (read from the cluster itself)."""

    async def look() -> bool:
        nc = await nats.connect(d.extra_env["ATLAS_NATS_URL"].split(","))
        try:
            await nc.jetstream().get_last_msg(CHATS, chat_subject(WS, chat_id))
            return True
        except NotFoundError:
            return False
        finally:
            await nc.close()

    return asyncio.run(look())


def test_a_chat_deleted_through_one_daemon_while_the_other_replies_leaves_no_record(
    pair: tuple[ClusterDaemon, ClusterDaemon], fake: FakeModels
) -> None:
    """The reply goes on on the daemon that runs it, whose last records land after the other daemon purged the
    chat: the turn's end finds the chat gone from the index and purges what it wrote since."""
    d1, d2 = pair
    with reply_held(d1, fake, "Then delete me", "Held ", "past the delete.") as (gate, _, started):
        chat = started[0][1]
        gone = http.delete(f"{d2.url}/api/workspaces/{WS}/chat/{chat['chatId']}", timeout=30)
        assert gone.status_code == 204, gone.text
        assert http.get(f"{d1.url}/api/workspaces/{WS}/chat/{chat['chatId']}", timeout=30).status_code == 404
        gate.set()
    wait_for(lambda: not chat_records_left(d1, chat["chatId"]), 30, what="no record of the deleted chat")
    assert http.get(f"{d2.url}/api/workspaces/{WS}/chat", timeout=30).status_code == 200
