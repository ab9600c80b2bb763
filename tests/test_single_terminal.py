"""Exactly one terminal record per session (spec §4.4), also when this daemon's picture of a session is behind its
log: a writer positioned on a log that already ends with `session:complete` refuses to end it again.

Found by the kill-one-nats-node chaos test (two `session:complete` in one log). Here the other writer's events are
put on the bus directly and its terminal event is not applied locally, as when its acknowledgement was lost or the
materialiser has not delivered it yet. Real nats-server and SQLite.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from atlas.bus.client import WrongLastSequence
from atlas.runtime.daemon import Daemon
from atlas.sessions import events
from atlas.sessions.events import now_iso
from atlas.sessions.writer import SessionWriter
from tests.daemon_proc import FIXTURES
from tests.inproc import running


async def log_ended_elsewhere(d: Daemon, kinds: list[str]) -> str:
    """A session whose events `kinds` this daemon applied, followed by a `session:complete` it did not."""
    sid = str(uuid.uuid4())
    common: dict[str, Any] = {"workspaceId": "core", "jobName": "slow", "signalId": "slow", "task": "slow",
                              "trigger": "http", "correlationId": str(uuid.uuid4()), "rootSessionId": sid,
                              "depth": 0, "plannedSteps": [], "timestamp": now_iso()}
    tail = 0
    extra = {"session:queued": {"payload": {}}, "session:start": {"runner": str(uuid.uuid4())}}
    for seq, kind in enumerate(kinds, start=1):
        event = {"type": kind, "sessionId": sid, "seq": seq, **common, **extra.get(kind, {})}
        tail = await d.bus.append_event(event, tail)
        d.store.apply(event, tail)
    done = {"type": "session:complete", "sessionId": sid, "seq": len(kinds) + 1, "timestamp": now_iso(),
            "status": "cancelled", "errorCode": "cancelled_elsewhere"}
    await d.bus.append_event(done, tail)
    return sid


async def completes(d: Daemon, sid: str) -> list[dict[str, Any]]:
    return [e for e, _ in await d.bus.read_events(sid) if e.get("type") == "session:complete"]


async def test_a_writer_on_an_ended_log_refuses_a_second_terminal_event(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        sid = await log_ended_elsewhere(d, ["session:queued", "session:start"])
        writer = await SessionWriter.resume(d.session_log, d.store, sid)
        assert writer.ended
        with pytest.raises(WrongLastSequence):
            await writer.append(events.complete(sessionId=sid, seq=writer.next_seq, status="failed", durationMs=0,
                                                errorCode="x"))
        await writer.append(events.summary(sessionId=sid, seq=writer.next_seq, summary="still allowed", keyDetails=[]))
        assert len(await completes(d, sid)) == 1


async def test_cancelling_a_session_that_looks_queued_here_but_ended_elsewhere(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        sid = await log_ended_elsewhere(d, ["session:queued"])
        assert (d.store.view(sid) or {})["status"] == "queued"  # this daemon has not seen the end yet
        await d.cancel(sid, "cancelled", "cancelled", "Cancelled by the test")
        ends = await completes(d, sid)
        assert [e["errorCode"] for e in ends] == ["cancelled_elsewhere"]


async def test_interrupting_a_session_that_ended_elsewhere_keeps_the_one_end(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        sid = await log_ended_elsewhere(d, ["session:queued", "session:start", "step:start"])
        await d.recovery.interrupt(sid)
        assert [e["errorCode"] for e in await completes(d, sid)] == ["cancelled_elsewhere"]
        view = d.store.view(sid)
        assert view is not None and view["status"] == "cancelled"
