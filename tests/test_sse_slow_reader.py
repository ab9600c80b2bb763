"""Bug 7 of issue #19: the SSE trigger stream (spec §5.4) must finish for a slow reader.

A real atlasd (a child process, on uvloop) runs a job that first floods its session with ephemeral chunks (large
ones, to fill the sockets between the daemon and a client that does not read, then many small ones, more than any
hand-off queue holds) and then writes a few hundred durable events. The client asks for the SSE trigger stream,
reads the first frame, stops reading until the session is over (it polls the session's status meanwhile), then
reads the rest. Chunks may be dropped (they are live-only, §3.3); durable events may not: every one arrives, in
order, followed by `data-session-finish`, `job-complete` and `data: [DONE]`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon_proc import DaemonProcess, wait_for

BIG_CHUNKS = 150  # 150 x 60 KB: more than the kernel buffers a non-reading client's connection
SMALL_CHUNKS = 12_000  # then more chunks than a stream's hand-off queue holds
ECHO_STEPS = 150  # then 300 durable step events (plus queued, start, complete)

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
'''


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flood_steps.py").write_text(FLOOD_MODULE)
    config = {
        "version": "1.0",
        "workspace": {"id": "slowreader", "name": "Slow SSE reader"},
        "signals": {"flood": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/flood"}}},
        "agents": {"flooder": {"type": "python", "config": {
            "entrypoint": "flood_steps:flood", "params": {"big": BIG_CHUNKS, "small": SMALL_CHUNKS}}}},
        "jobs": {"flood": {
            "triggers": [{"signal": "flood"}],
            "config": {"max_steps": 1000},
            "execution": {"strategy": "sequential", "agents": ["flooder"] + ["atlas/echo"] * ECHO_STEPS},
        }},
    }
    (root / "workspace.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    ws = _workspace(tmp_path_factory.mktemp("slowreader-ws"))
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-home"), [ws]).start()
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
    r = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=5)
    return r.json().get("status") if r.status_code == 200 else None


def test_slow_sse_reader_gets_every_durable_event_then_done(daemon: DaemonProcess) -> None:
    # A small receive window: the daemon's writes block after its own send buffer fills, whatever the tuning.
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)])
    with httpx.Client(transport=transport, timeout=httpx.Timeout(30.0)) as client, client.stream(
        "POST", f"{daemon.url}/api/workspaces/slowreader/signals/flood", json={"payload": {"n": 1}},
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.status_code == 200, r.read()
        frames = _data_frames(r.iter_lines())
        first = next(frames)
        assert first["type"] == "data-session-accepted"
        sid = first["data"]["sessionId"]
        # The slow part: read nothing until the session is over (megabytes pile up against this client).
        wait_for(lambda: _status(daemon, sid) == "completed", 120, 0.2, "the flooding session to complete")
        rest = list(frames)  # before the fix: the stream stalls here (ReadTimeout), it never ends
    view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=5).json()
    last_seq = int(view["lastSeq"])
    assert last_seq == 3 + 2 * (1 + ECHO_STEPS)  # queued, start, 151 x (step:start, step:complete), complete

    assert rest[-1] == "[DONE]"
    assert rest[-2]["type"] == "job-complete" and rest[-2]["data"]["sessionId"] == sid
    assert rest[-2]["data"]["status"] == "completed" and rest[-2]["data"]["success"] is True
    assert rest[-3]["type"] == "data-session-finish" and rest[-3]["data"]["status"] == "completed"
    events = [f["data"] for f in rest[:-3] if f["type"] == "data-session-event"]
    assert [e["seq"] for e in events] == list(range(1, last_seq + 1))  # every durable event, in order, once
    assert events[-1]["type"] == "session:complete" and events[-1]["status"] == "completed"
    starts = [i for i, f in enumerate(rest) if f != "[DONE]" and f["type"] == "data-session-start"]
    assert len(starts) == 1 and rest[starts[0] + 1]["data"]["type"] == "session:start"
    chunks = sum(1 for f in rest[:-1] if f["type"] == "data-ephemeral")
    # The reader really was slow: the daemon had to drop live-only chunks to keep up (spec §3.3).
    assert chunks < BIG_CHUNKS + SMALL_CHUNKS


def test_sse_client_that_goes_away_cancels_its_session(daemon: DaemonProcess) -> None:
    """The bounded feed keeps §5.4's other promise: a streaming client that disconnects cancels the session."""
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{daemon.url}/api/workspaces/slowreader/signals/flood", json={"payload": {"n": 2}},
        headers={"Accept": "text/event-stream"},
    ) as r:
        first = next(_data_frames(r.iter_lines()))
        sid = first["data"]["sessionId"]
    # Hung up after the first frame, while the session floods: it ends cancelled, not completed.
    wait_for(lambda: _status(daemon, sid) in ("cancelled", "completed"), 60, 0.1, "the session to end")
    view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=5).json()
    assert view["status"] == "cancelled" and view["errorCode"] == "client_disconnected"
