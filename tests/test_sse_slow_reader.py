"""Bug 7 of issue #19: the SSE trigger stream (spec §5.4) must finish for a slow reader.

A real atlasd (a child process, on uvloop) runs a job that first floods its session with ephemeral chunks, then
writes 100 steps with large outputs (megabytes: more than the sockets between the daemon and a client that does
not read can hold) and then 600 small steps (more durable events than a stream's hand-off queue holds). The client
asks for the SSE trigger stream, reads the first frame, stops reading until the session is over (it polls the
session's status meanwhile), then reads the rest. Chunks may be dropped (they are live-only, §3.3); durable events
may not: every one arrives, once and in order, followed by `data-session-finish`, `job-complete` and
`data: [DONE]`. The durable flood alone overflows the stream's queue, so the test holds whether or not the daemon
coalesces chunks.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

BIG_CHUNKS = 150  # 150 x 60 KB of chunks: more than the kernel buffers for a connection that is not read
SMALL_CHUNKS = 12_000  # then more chunks than a stream's hand-off queue holds
BIG_STEPS = 100  # 100 steps with a 60 KB output each: the same, with durable events (chunks may be coalesced)
ECHO_STEPS = 600  # then 1,200 small durable events, more than a stream's hand-off queue holds (1,024)
STEPS = 1 + BIG_STEPS + ECHO_STEPS
END_WITHIN_S = 120  # a liveness bound: the rest of the stream, once the session is over

FLOOD_MODULE = '''\
"""A step that floods its session with ephemeral chunks (tests/test_sse_slow_reader.py)."""

import asyncio


async def flood(ctx):
    big = "x" * 60_000
    for i in range(ctx.params["big"]):
        ctx.emit_progress("big", current=i, data=big)
        await asyncio.sleep(0)
    for i in range(ctx.params["small"]):
        ctx.emit_progress("small", current=i)
        if i % 100 == 0:
            await asyncio.sleep(0)
    return {"flooded": ctx.params["big"] + ctx.params["small"]}


def big(ctx):
    return "y" * 60_000
'''


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flood_steps.py").write_text(FLOOD_MODULE)
    config = {
        "version": "1.0",
        "workspace": {"id": "slowreader", "name": "Slow SSE reader"},
        "signals": {"flood": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/flood"}}},
        "agents": {"flooder": {"type": "python", "config": {
            "entrypoint": "flood_steps:flood", "params": {"big": BIG_CHUNKS, "small": SMALL_CHUNKS}}},
            "bigout": {"type": "python", "config": {"entrypoint": "flood_steps:big"}}},
        "jobs": {"flood": {
            "triggers": [{"signal": "flood"}],
            "config": {"max_steps": STEPS},
            "execution": {"strategy": "sequential",
                          "agents": ["flooder"] + ["bigout"] * BIG_STEPS + ["atlas/echo"] * ECHO_STEPS},
        }},
    }
    (root / "workspace.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    ws = _workspace(tmp_path_factory.mktemp("slowreader-ws"))
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-home"), [ws, FIXTURES / "core"]).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


def _data_frames(lines: Iterator[str]) -> Iterator[Any]:
    """The `data:` payloads of an SSE body, parsed (`[DONE]` stays a string)."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            yield data if data == "[DONE]" else json.loads(data)


def _status(daemon: DaemonProcess, sid: str) -> str | None:
    """The session's status, or None while the daemon is too busy to say (a loaded machine; the poll goes on)."""
    try:
        r = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=10)
    except httpx.TimeoutException:
        return None
    return r.json().get("status") if r.status_code == 200 else None


def test_slow_sse_reader_gets_every_durable_event_then_done(daemon: DaemonProcess) -> None:
    # A small receive window: the daemon's writes block after its own send buffer fills, whatever the tuning.
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)])
    with httpx.Client(transport=transport, timeout=httpx.Timeout(60.0)) as client, client.stream(
        "POST", f"{daemon.url}/api/workspaces/slowreader/signals/flood", json={"payload": {"n": 1}},
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.status_code == 200, r.read()
        frames = _data_frames(r.iter_lines())
        first = next(frames)
        assert first["type"] == "data-session-accepted"
        sid = first["data"]["sessionId"]
        # The slow part: read nothing until the session is over (megabytes pile up against this client).
        wait_for(lambda: _status(daemon, sid) == "completed", 180, 0.2, "the flooding session to complete")
        rest = []
        deadline = time.monotonic() + END_WITHIN_S
        for frame in frames:  # before the fix: the stream stalled here (ReadTimeout), it never ended
            rest.append(frame)
            assert time.monotonic() < deadline, f"the stream did not end within {END_WITHIN_S} s"
    view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=30).json()
    last_seq = int(view["lastSeq"])
    assert last_seq == 3 + 2 * STEPS  # queued, start, a step:start and a step:complete per step, complete

    assert rest[-1] == "[DONE]"
    assert rest[-2]["type"] == "job-complete" and rest[-2]["data"]["sessionId"] == sid
    assert rest[-2]["data"]["status"] == "completed" and rest[-2]["data"]["success"] is True
    assert rest[-3]["type"] == "data-session-finish" and rest[-3]["data"]["status"] == "completed"
    events = [f["data"] for f in rest[:-3] if f["type"] == "data-session-event"]
    assert [e["seq"] for e in events] == list(range(1, last_seq + 1))  # every durable event, in order, once
    assert events[-1]["type"] == "session:complete" and events[-1]["status"] == "completed"
    starts = [i for i, f in enumerate(rest) if f != "[DONE]" and f["type"] == "data-session-start"]
    assert len(starts) == 1 and rest[starts[0] + 1]["data"]["type"] == "session:start"


def _last_seq(daemon: DaemonProcess, sid: str) -> int:
    return int(httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=30).json().get("lastSeq", 0))


def test_sse_client_that_goes_away_cancels_its_session(daemon: DaemonProcess) -> None:
    """The bounded feed keeps §5.4's other promise: a streaming client that disconnects cancels the session."""
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{daemon.url}/api/workspaces/core/signals/slow", json={"payload": {"duration": "60s"}},
        headers={"Accept": "text/event-stream"},
    ) as r:
        frames = _data_frames(r.iter_lines())  # kept: closing this iterator would close the connection
        sid = next(frames)["data"]["sessionId"]
        # Hang up once the runner has recorded its step:start (seq 3) and sleeps: a cancel that lands while an
        # append is in flight is another matter (reported separately), not what this test is about.
        wait_for(lambda: _last_seq(daemon, sid) >= 3, 30, 0.05, "the step to start")
    wait_for(lambda: _status(daemon, sid) not in (None, "queued", "active"), 30, 0.1, "the session to end")
    view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=30).json()
    assert view["status"] == "cancelled" and view["errorCode"] == "client_disconnected"
