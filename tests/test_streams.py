"""SSE session streams against real daemons (spec §9 "Per-session stream", "Tree stream"; §13 items 5, 40, 41).

Most tests drive a daemon in a child process over HTTP, like a browser's EventSource would, and parse the SSE wire
format themselves. A few need to look inside the daemon (listeners left behind, resyncs of a slow client, the
shutdown hook), so they run a real `Daemon` with uvicorn in the test's own event loop: still the real
nats-server, SQLite and HTTP, only in-process. Those run on both event loops (`both_loops`): uvloop, which atlasd
runs on, and the standard library's, whose stream and cancellation behaviour differs in places.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from atlas.api.app import create_app
from atlas.api.streams import StreamHub
from atlas.config.settings import Settings
from atlas.runtime.daemon import Daemon
from atlas.sessions.reducer import build_view, is_terminal
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

WORKSPACES = [FIXTURES / "core", FIXTURES / "other", FIXTURES / "streams"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """The shared daemon, plus the `streams` fixture workspace (progress chunks, long sessions, a growing tree)."""
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-home"), WORKSPACES).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


# ---------------------------------------------------------------- SSE client side


@dataclass
class Frame:
    id: int | None
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Splits an SSE body into frames (blank-line separated `field: value` lines; `:` lines are comments)."""

    lines: Iterator[str]
    comments: list[str] = field(default_factory=list)

    def next(self) -> Frame | None:
        """The next frame, or None once the server has closed the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in self.lines:
            if line == "":
                if fields or data:
                    return _frame(fields, data)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        assert not fields and not data, "stream closed in the middle of a frame"
        return None

    def rest(self) -> list[Frame]:
        frames = []
        while (frame := self.next()) is not None:
            frames.append(frame)
        return frames


def _frame(fields: dict[str, str], data: list[str]) -> Frame:
    return Frame(int(fields["id"]) if "id" in fields else None, fields.get("event"), "\n".join(data))


def read_stream(url: str, headers: dict[str, str] | None = None, **params: Any) -> list[Frame]:
    """Every frame of a stream the server closes by itself (a replay of something finished)."""
    with httpx.stream("GET", url, headers=headers, params=params, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        return SseReader(r.iter_lines()).rest()


def durable(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.event is None]


def ephemeral(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.event == "ephemeral"]


def post(d: DaemonProcess, ws: str, sig: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    r = httpx.post(f"{d.url}/api/workspaces/{ws}/signals/{sig}?nowait=true", json={"payload": payload or {}},
                   timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def view(d: DaemonProcess, sid: str) -> dict[str, Any]:
    r = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_terminal(d: DaemonProcess, sid: str, timeout: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        current = view(d, sid)
        return current if is_terminal(current["status"]) else None

    return wait_for(ended, timeout, what=f"session {sid} to end")


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def assert_session_log(frames: list[Frame], sid: str, first: int = 1) -> list[dict[str, Any]]:
    """One session's durable frames: ids equal seqs, contiguous from `first`, session:complete once and last."""
    events = [f.json() for f in frames]
    assert all(e["sessionId"] == sid for e in events)
    assert [f.id for f in frames] == [e["seq"] for e in events] == list(range(first, first + len(events)))
    assert [e["type"] for e in events].count("session:complete") == 1 and events[-1]["type"] == "session:complete"
    return events


def assert_tree_log(frames: list[Frame]) -> dict[str, list[dict[str, Any]]]:
    """A tree's durable frames: ids strictly increasing, each session contiguous from seq 1 and complete."""
    ids = [f.id for f in frames]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids)), ids  # type: ignore[type-var]
    per: dict[str, list[dict[str, Any]]] = {}
    for f in frames:
        event = f.json()
        per.setdefault(event["sessionId"], []).append(event)
    for events in per.values():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "session:queued" and events[-1]["type"] == "session:complete"
    return per


# ---------------------------------------------------------------- per-session stream


def test_finished_session_is_replayed_in_order_then_end_and_close(daemon: DaemonProcess) -> None:
    sid = post(daemon, "core", "echo", {"n": 4})["sessionId"]
    final = wait_terminal(daemon, sid)
    frames = read_stream(f"{daemon.url}/api/sessions/{sid}/stream")
    *events, end = frames
    log = assert_session_log(events, sid)
    assert [e["type"] for e in log] == ["session:queued", "session:start", "step:start", "step:complete",
                                        "session:complete"]
    assert (end.event, end.id, end.json()) == ("end", None, {"status": "completed"})
    # The browser folds the stream with the same reducer: it must land on the API's view (spec §3.5).
    assert build_view(log) == final


def test_last_event_id_replays_only_later_events(daemon: DaemonProcess) -> None:
    sid = post(daemon, "core", "echo", {"n": 1})["sessionId"]
    wait_terminal(daemon, sid)
    url = f"{daemon.url}/api/sessions/{sid}/stream"
    assert [f.id for f in read_stream(url, {"Last-Event-ID": "3"})] == [4, 5, None]
    assert [f.id for f in read_stream(url, after=3)] == [4, 5, None]
    assert [f.id for f in read_stream(url, {"Last-Event-ID": "4"}, after=1)] == [5, None]  # the header wins
    only_end = read_stream(url, {"Last-Event-ID": "5"})
    assert [(f.event, f.json()) for f in only_end] == [("end", {"status": "completed"})]
    for bad in ("abc", "-1", "1.5"):
        assert_error(httpx.get(url, headers={"Last-Event-ID": bad}), 400, "invalid_query")
    assert_error(httpx.get(url, params={"after": "x"}), 400, "invalid_query")


def test_live_session_has_no_gap_or_duplicate_and_chunks_only_live(daemon: DaemonProcess) -> None:
    sid = post(daemon, "streams", "count")["sessionId"]
    live = read_stream(f"{daemon.url}/api/sessions/{sid}/stream")  # right after the 202, while step 1 naps
    assert live[-1].event == "end" and live[-1].json() == {"status": "completed"}
    events = assert_session_log(durable(live), sid)
    assert [e["type"] for e in events] == ["session:queued", "session:start"] + ["step:start", "step:complete"] * 3 \
        + ["session:complete"]
    chunks = [f.json() for f in ephemeral(live)]
    assert [c["chunk"]["current"] for c in chunks] == [1, 2, 3]
    assert all(c["sessionId"] == sid and c["stepNumber"] == 2 and c["chunk"]["type"] == "progress" for c in chunks)
    # Chunks travel while step 2 runs: between its step:start (seq 5) and step:complete (seq 6).
    position = {id(f): i for i, f in enumerate(live)}
    start, complete = (next(f for f in live if f.id == n) for n in (5, 6))
    assert all(position[id(start)] < position[id(f)] < position[id(complete)] for f in ephemeral(live))
    # A replay carries the same durable frames and never a chunk (spec §13.5).
    replay = read_stream(f"{daemon.url}/api/sessions/{sid}/stream")
    assert ephemeral(replay) == []
    assert [(f.id, f.data) for f in durable(replay)] == [(f.id, f.data) for f in durable(live)]


def test_many_events_are_replayed_across_pages(daemon: DaemonProcess) -> None:
    sid = post(daemon, "streams", "many", {"n": 1})["sessionId"]
    assert wait_terminal(daemon, sid, 120)["status"] == "completed"
    frames = read_stream(f"{daemon.url}/api/sessions/{sid}/stream")
    events = assert_session_log(durable(frames), sid)
    assert len(events) == 403  # queued, start, 200 × (step:start, step:complete), complete
    assert frames[-1].event == "end"
    assert [f.id for f in read_stream(f"{daemon.url}/api/sessions/{sid}/stream", after=390)][:2] == [391, 392]


def test_unknown_session_is_404_json(daemon: DaemonProcess) -> None:
    for sid in (str(uuid.uuid4()), "a.b", "sessions.*", ">"):
        assert_error(httpx.get(f"{daemon.url}/api/sessions/{sid}/stream"), 404, "session_not_found")


def test_disconnecting_client_leaves_the_daemon_serving(daemon: DaemonProcess) -> None:
    sid = post(daemon, "core", "slow", {"duration": "1500ms"})["sessionId"]
    for _ in range(3):  # connect, read the replay's first frame, hang up mid-stream
        with httpx.stream("GET", f"{daemon.url}/api/sessions/{sid}/stream", timeout=30) as r:
            first = SseReader(r.iter_lines()).next()
            assert first is not None and first.id == 1
    frames = read_stream(f"{daemon.url}/api/sessions/{sid}/stream")
    assert frames[-1].json() == {"status": "completed"}
    assert_session_log(durable(frames), sid)
    assert httpx.get(f"{daemon.url}/health").json()["status"] == "ok"


# ---------------------------------------------------------------- tree stream


def test_tree_stream_of_a_cascade(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "fan", {"n": 3})
    cid = body["correlationId"]
    frames = read_stream(f"{daemon.url}/api/sessions/stream", correlationId=cid)
    *events, end = frames
    per = assert_tree_log(durable(events))
    listed = httpx.get(f"{daemon.url}/api/sessions", params={"correlationId": cid}).json()["sessions"]
    assert set(per) == {s["sessionId"] for s in listed} and len(per) == 2
    child = next(sid for sid in per if sid != body["sessionId"])
    assert per[child][0]["workspaceId"] == "other" and per[child][0]["parentSessionId"] == body["sessionId"]
    assert (end.event, end.json()) == ("end", {"correlationId": cid, "sessions": 2})


def test_tree_stream_follows_children_created_after_connect(daemon: DaemonProcess) -> None:
    body = post(daemon, "streams", "tree")
    cid, root = body["correlationId"], body["sessionId"]
    with httpx.stream("GET", f"{daemon.url}/api/sessions/stream", params={"correlationId": cid}, timeout=30) as r:
        assert r.status_code == 200
        # Subscribed (the headers are out) while the root still naps for 1 s: the tree has no child yet.
        listed = httpx.get(f"{daemon.url}/api/sessions", params={"correlationId": cid}).json()["sessions"]
        assert [s["sessionId"] for s in listed] == [root]
        frames = SseReader(r.iter_lines()).rest()
    *events, end = frames
    per = assert_tree_log(durable(events))
    assert len(per) == 3 and end.json() == {"correlationId": cid, "sessions": 3}
    leaf = next(sid for sid, evs in per.items() if evs[0]["jobName"] == "leaf")
    assert {evs[0]["workspaceId"] for evs in per.values()} == {"streams", "other"}
    chunks = [f.json() for f in ephemeral(events)]
    assert [c["chunk"]["current"] for c in chunks] == [1, 2, 3] and {c["sessionId"] for c in chunks} == {leaf}
    # The root ended before its fire-and-forget child in `other`, yet the stream waited for all three.
    assert all(e["type"] == "session:complete" for e in (evs[-1] for evs in per.values()))


def test_tree_stream_resumes_from_last_event_id(daemon: DaemonProcess) -> None:
    cid = post(daemon, "core", "fan", {"n": 1})["correlationId"]
    url = f"{daemon.url}/api/sessions/stream"
    full = read_stream(url, correlationId=cid)
    ids = [f.id for f in durable(full)]
    for k in (ids[0], ids[len(ids) // 2], ids[-1]):
        resumed = read_stream(url, {"Last-Event-ID": str(k)}, correlationId=cid)
        assert [(f.id, f.event, f.data) for f in resumed] == [(f.id, f.event, f.data) for f in full
                                                              if f.id is None or f.id > k]
    assert [f.id for f in read_stream(url, correlationId=cid, after=ids[-2])] == [ids[-1], None]


def test_tree_stream_query_errors(daemon: DaemonProcess) -> None:
    url = f"{daemon.url}/api/sessions/stream"
    assert_error(httpx.get(url), 400, "invalid_query")
    assert_error(httpx.get(url, params={"correlationId": ""}), 400, "invalid_query")
    cid = post(daemon, "core", "echo", {"n": 1})["correlationId"]
    assert_error(httpx.get(url, params={"correlationId": cid}, headers={"Last-Event-ID": "x"}), 400,
                 "invalid_query")
    started = time.monotonic()
    assert_error(httpx.get(url, params={"correlationId": str(uuid.uuid4())}, timeout=10), 404,
                 "correlation_not_found")
    assert time.monotonic() - started >= 1.5  # it waited for the id to show up before giving up


# ---------------------------------------------------------------- in-process daemon: what HTTP cannot show


@dataclass
class InProcess:
    daemon: Daemon
    hub: StreamHub
    url: str

    def baseline(self) -> tuple[int, int, int]:
        """Store listeners, NATS subscriptions and open streams: what a leaking stream would leave behind."""
        assert self.daemon.bus.nc is not None
        return len(self.daemon.store._listeners), len(self.daemon.bus.nc._subs), self.hub.open_streams


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def inproc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    home: Path = tmp_path_factory.mktemp("atlas-inproc")
    sock = socket.socket()
    # Accepted sockets inherit a fixed (so not auto-tuned) send buffer: a client that stops reading blocks the
    # daemon's writes after a few hundred KB instead of several MB, which the slow-client test relies on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    d = Daemon(Settings(home=home, port=port, workspaces=tuple(WORKSPACES)))
    await d.start()
    app = create_app(d)
    server = uvicorn.Server(uvicorn.Config(app, loop="none", http="httptools", lifespan="off", access_log=False,
                                           log_level="warning", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started, what="uvicorn to start")
    try:
        yield InProcess(d, app.state.streams, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        await d.stop()


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` (letting the in-process daemon run) until truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def apost(client: httpx.AsyncClient, ws: str, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/api/workspaces/{ws}/signals/{sig}?nowait=true", json={"payload": payload})
    assert r.status_code == 202, r.text
    return r.json()


async def next_frame(lines: AsyncIterator[str]) -> Frame:
    """The async twin of `SseReader.next`, for the in-process tests (comments are skipped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in lines:
        if line == "" and (fields or data):
            return _frame(fields, data)
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    raise AssertionError("stream closed")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.both_loops
async def test_client_disconnect_releases_listener_and_subscription(inproc: InProcess) -> None:
    base = inproc.baseline()
    async with httpx.AsyncClient(base_url=inproc.url, timeout=30) as client:
        body = await apost(client, "core", "slow", {"duration": "1500ms"})
        for path, params in ((f"/api/sessions/{body['sessionId']}/stream", {}),
                             ("/api/sessions/stream", {"correlationId": body["correlationId"]})):
            async with client.stream("GET", path, params=params) as r:
                assert (await next_frame(r.aiter_lines())).id is not None
                listeners, subs, open_streams = inproc.baseline()
                assert (listeners, subs, open_streams) == (base[0] + 1, base[1] + 1, base[2] + 1)
            # The client hung up while the session still runs: everything the stream held is released.
            await until(lambda: inproc.baseline() == base, 5, "the stream's listener and subscription to go")
        r = await client.get("/api/sessions/stream", params={"correlationId": str(uuid.uuid4())})
        assert r.status_code == 404 and inproc.baseline() == base


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.both_loops
async def test_keep_alive_comment_during_silence(inproc: InProcess) -> None:
    inproc.hub.settings.keepalive_s = 0.2  # the spec's 15 s, shortened
    try:
        async with httpx.AsyncClient(base_url=inproc.url, timeout=30) as client:
            sid = (await apost(client, "core", "slow", {"duration": "1s"}))["sessionId"]
            async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
                text = (await r.aread()).decode()
    finally:
        inproc.hub.settings.keepalive_s = 15.0
    assert ": keep-alive\n\n" in text and text.endswith('event: end\ndata: {"status":"completed"}\n\n')


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.both_loops
async def test_slow_client_is_resynced_from_the_bus(inproc: InProcess) -> None:
    """A client that stops reading fills its socket; the stream's queue overflows and is refilled from the bus."""
    inproc.hub.settings.queue_capacity = 2
    resyncs = inproc.hub.resyncs
    # A small receive window, so the daemon's socket fills after a few hundred KB whatever the kernel's tuning.
    small_window = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)])
    try:
        async with httpx.AsyncClient(base_url=inproc.url, timeout=60, transport=small_window) as client:
            sid = (await apost(client, "streams", "big", {"text": "x" * 30_000}))["sessionId"]
            async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
                lines = r.aiter_lines()
                first = await next_frame(lines)
                # Stop reading until the session is over: ~2.4 MB of events pile up against the client.
                await until(lambda: is_terminal((inproc.daemon.store.view(sid) or {}).get("status")), 60,
                            "the big session to end")
                frames = [first]
                while frames[-1].event != "end":
                    frames.append(await next_frame(lines))
    finally:
        inproc.hub.settings.queue_capacity = 1024
    assert_session_log(frames[:-1], sid)
    assert len(frames) == 2 + 40 * 2 + 1 + 1 and frames[-1].json() == {"status": "completed"}
    assert inproc.hub.resyncs > resyncs


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.both_loops
async def test_close_all_ends_open_streams(inproc: InProcess) -> None:
    async with httpx.AsyncClient(base_url=inproc.url, timeout=30) as client:
        sid = (await apost(client, "core", "slow", {"duration": "1s"}))["sessionId"]
        async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
            lines = r.aiter_lines()
            assert (await next_frame(lines)).id == 1
            await until(lambda: inproc.hub.open_streams == 1, what="the stream to register")
            inproc.hub.close_all()  # what shutdown does: the stream ends without `end`, so the client reconnects
            rest = [line async for line in lines]
    assert "event: end" not in rest
    await until(lambda: inproc.hub.open_streams == 0, what="the stream to be released")
