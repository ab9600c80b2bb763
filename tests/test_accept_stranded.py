"""A trigger whose envelope does not land while its `session:queued` does (spec §4.4, §8.2).

Acceptance writes both at once, so SIGNALS can refuse the envelope (here: the stream no longer takes the signal's
subject, as when its leader is lost on a cluster) after SESSION_EVENTS took `session:queued`. The caller gets 503
and the session must still end: at once as `failed` / `bus_unavailable`, or — when even that write never landed —
through recovery, which republishes an envelope rebuilt from the log so the session runs. Real nats-server and
SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atlas.api.errors import http_status
from atlas.bus.client import SIGNALS
from atlas.errors import AtlasError
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.daemon import Daemon
from atlas.sessions.events import format_iso
from tests.daemon_proc import FIXTURES
from tests.inproc import running


def signals_refusing(d: Daemon) -> AbstractAsyncContextManager[None]:
    """SIGNALS stops taking workspace signals for a while (every other stream keeps working)."""
    return stream_refusing(d, SIGNALS)


@asynccontextmanager
async def stream_refusing(d: Daemon, stream: str) -> AsyncIterator[None]:
    """`stream` takes no message for a while (what a stream without a leader answers: no responders); every
    other stream keeps working."""
    info = await d.bus.js.stream_info(stream)
    subjects = list(info.config.subjects or [])
    info.config.subjects = ["atlas.test.nothing"]
    await d.bus.js.update_stream(info.config)
    try:
        yield
    finally:
        info.config.subjects = subjects
        await d.bus.js.update_stream(info.config)


async def test_envelope_refused_gives_503_and_a_failed_record(tmp_path: Path) -> None:
    # Writes ride through a silent stream (half of ATLAS_BUS_RETRY for an accept): 1 s here, not 30.
    async with running(tmp_path / "home", (FIXTURES / "core",), bus_retry_s=1.0) as d:
        req = TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1}, trigger="http")
        async with signals_refusing(d):
            with pytest.raises(AtlasError) as err:
                await d.accept.accept(req)
        assert http_status(err.value.code) == 503 and err.value.code == "bus_unavailable"
        sessions = d.store.rm.list_sessions(workspace_id="core")[0]
        assert len(sessions) == 1, sessions
        view = d.store.view(sessions[0]["sessionId"])
        assert view is not None and view["status"] == "failed" and view["errorCode"] == "bus_unavailable"
        last = await d.bus.last_event(view["sessionId"])
        assert last is not None and last[0]["type"] == "session:complete"  # durable, not only local


async def test_recovery_runs_a_queued_session_whose_envelope_never_landed(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
        # What a daemon that died right after its `session:queued` landed (and its envelope did not) leaves behind.
        event = {"type": "session:queued", "sessionId": sid, "seq": 1,
                 "timestamp": format_iso(datetime.now(UTC) - timedelta(seconds=30)),
                 "workspaceId": "core", "jobName": "echo", "signalId": "echo", "task": "echo", "trigger": "http",
                 "correlationId": cid, "rootSessionId": sid, "depth": 0, "plannedSteps": [], "payload": {"n": 7}}
        tail = await d.bus.append_event(event, 0)
        d.store.apply(event, tail)

        await d.recovery.run_once(at_start=False)

        view = await d.store.wait_terminal(sid, 20)
        assert view["status"] == "completed" and view["correlationId"] == cid
        starts = [e for e, _ in await d.bus.read_events(sid) if e["type"] == "session:start"]
        assert len(starts) == 1
        # A second pass republishes nothing more and changes nothing.
        await d.recovery.run_once(at_start=False)
        assert [e["type"] for e, _ in await d.bus.read_events(sid)].count("session:complete") == 1


async def test_a_young_queued_session_is_not_republished(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=30.0) as d:
        await d.consumer.stop()  # nothing takes envelopes: whatever recovery published would stay in SIGNALS
        accepted = await d.accept.accept(TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1},
                                                        trigger="http"))
        before = (await d.bus.js.stream_info(SIGNALS)).state.messages
        await d.recovery.run_once(at_start=False)
        assert (await d.bus.js.stream_info(SIGNALS)).state.messages == before == 1
        assert accepted.session_id not in d.recovery._republished


async def test_stranded_sessions_are_swept_a_page_per_pass(tmp_path: Path) -> None:
    """Each pass reads one bounded page of old queued sessions; consecutive passes reach all of them."""
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        d.recovery.STRANDED_PER_PASS = 2
        old = datetime.now(UTC) - timedelta(seconds=30)
        sids = []
        for i in range(5):
            sid = str(uuid.uuid4())
            event = {"type": "session:queued", "sessionId": sid, "seq": 1,
                     "timestamp": format_iso(old + timedelta(milliseconds=i)),
                     "workspaceId": "core", "jobName": "echo", "signalId": "echo", "task": "echo",
                     "trigger": "http", "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0,
                     "plannedSteps": [], "payload": {"n": i}}
            d.store.apply(event, await d.bus.append_event(event, 0))
            sids.append(sid)
        await d.recovery.run_once(at_start=False)
        assert len(d.recovery._republished) == 2
        for _ in range(3):
            await d.recovery.run_once(at_start=False)
        assert set(d.recovery._republished) == set(sids)
        for sid in sids:
            assert (await d.store.wait_terminal(sid, 20))["status"] == "completed"
