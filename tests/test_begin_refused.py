"""A `session:start` refused although the log has not moved on is no lost race (`SessionLifecycle.begin`).

A lost race (a cancel while queued, another daemon's start) makes `begin` answer False, and the consumer then acks
the envelope: the log has moved on without this daemon. A refusal while the log still ends at `session:queued` — a
writer positioned on a stale read, a refusal a cluster sends while electing a leader — used to be answered the same
way: the envelope was acked, nobody started the session, and recovery's republished copy was dropped by JetStream
as a duplicate (same `Nats-Msg-Id` within the hour), so the session stayed `queued`. Now `begin` raises, the
consumer naks the envelope, and a later attempt starts it.

In process, on a real nats-server: the test writes a session's `session:queued` itself (no envelope, so no consumer
takes it) and calls the daemon's own lifecycle with a writer that stands one stream sequence behind the log (what a
stale read gives), then with one that stands right.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from atlas.bus.client import WrongLastSequence
from atlas.bus.records import envelope
from atlas.runtime.accept import queued_event
from atlas.runtime.daemon import Daemon
from atlas.runtime.workspaces import Workspace
from atlas.sessions.events import now_iso
from atlas.sessions.writer import SessionWriter
from tests.daemon_proc import FIXTURES
from tests.inproc import running


async def queued_session(d: Daemon) -> tuple[Workspace, str, dict[str, Any], SessionWriter]:
    """A session of `core`'s echo signal whose `session:queued` the test wrote, as an accepting daemon would, but
    with no envelope: no consumer takes it. Its workspace, job, envelope and the acceptor's writer."""
    ws = d.workspaces.get("core")
    assert ws is not None
    job_id = ws.job_for_signal["echo"]
    sid = str(uuid.uuid4())
    env = envelope(workspace_id="core", signal_id="echo", session_id=sid, correlation_id=str(uuid.uuid4()),
                   root_session_id=sid, depth=0, trigger="http", payload={"n": 1}, accepted_at=now_iso(),
                   accepted_by="the-test")
    acceptor = SessionWriter(d.session_log, d.store, sid)
    await acceptor.append(queued_event(env, ws, job_id))
    return ws, job_id, env, acceptor


async def test_a_start_refused_while_the_log_did_not_move_raises_and_a_later_attempt_starts_it(
        tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        ws, job_id, env, acceptor = await queued_session(d)
        sid = env["sessionId"]
        stale = SessionWriter(d.session_log, d.store, sid, seq=1, stream_seq=acceptor.stream_seq - 1,
                              last_type="session:queued")
        with pytest.raises(WrongLastSequence):
            await d.lifecycle.begin(ws, job_id, env, stale)
        assert not d.lifecycle.is_running(sid)
        last = await d.session_log.last(sid)
        assert last is not None and last[0]["type"] == "session:queued"  # nothing written: still to be started

        writer = await SessionWriter.resume(d.session_log, d.store, sid)
        assert await d.lifecycle.begin(ws, job_id, env, writer)
        d.lifecycle.launch(ws, job_id, env, writer)
        view = await d.store.wait_terminal(sid, timeout=30)
        assert view["status"] == "completed"


async def test_a_start_that_lost_to_a_cancel_answers_false(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        ws, job_id, env, acceptor = await queued_session(d)
        sid = env["sessionId"]
        runner = SessionWriter(d.session_log, d.store, sid, seq=1, stream_seq=acceptor.stream_seq,
                               last_type="session:queued")
        await d.lifecycle.finalize_unstarted(acceptor, "cancelled", "cancelled", "Cancelled while queued", env)
        assert await d.lifecycle.begin(ws, job_id, env, runner) is False
        assert not d.lifecycle.is_running(sid)
