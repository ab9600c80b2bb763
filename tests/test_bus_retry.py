"""Writes ride through a stream that does not answer for a while, and a retried write counts once (issue 19, bug 14).

On a cluster that lost one node of three, a stream led there answers "no responders" until the others elect a
leader (4–9 s), and a write whose leader died holding it is never acknowledged although it may have landed. Here
the first is made real on one nats-server by taking a stream's subject away for a while (as
`test_accept_stranded.py` does), and the second by sending our own copy of an event first, as the attempt whose
acknowledgement was lost. The multi-node version is `tests/cluster/test_nats_node_loss.py`. Real nats-server and
SQLite.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlas.bus.client import SESSION_EVENTS, SIGNALS, WrongLastSequence, events_subject
from atlas.bus.records import envelope_from_queued
from atlas.jsoncodec import dumps
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.daemon import Daemon
from atlas.sessions.events import format_iso, now_iso
from atlas.sessions.writer import SessionWriter
from tests.daemon_proc import FIXTURES
from tests.inproc import running
from tests.test_accept_stranded import signals_refusing, stream_refusing


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `cond` until it holds (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def attempts(d: Daemon) -> int:
    """How many acknowledged publishes this daemon's bus has sent so far, retries included."""
    return d.bus._acks._counter  # type: ignore[union-attr]


async def signals_messages(d: Daemon) -> int:
    return int((await d.bus.js.stream_info(SIGNALS)).state.messages)


def queued_event(sid: str) -> dict[str, Any]:
    return {"type": "session:queued", "sessionId": sid, "seq": 1, "timestamp": now_iso(), "workspaceId": "core",
            "jobName": "echo", "signalId": "echo", "task": "echo", "trigger": "http",
            "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": [],
            "payload": {}}


@pytest.mark.both_loops
async def test_an_append_whose_ack_was_lost_but_landed_counts_once(tmp_path: Path) -> None:
    """Was: the retry's `duplicate` answer was taken for another writer's event (WrongLastSequence), so the run
    thought it had lost its session."""
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        sid = str(uuid.uuid4())
        tail = await d.bus.append_event(queued_event(sid), 0)
        start = {"type": "session:start", "sessionId": sid, "seq": 2, "timestamp": now_iso(), "runner": d.daemon_id}
        # The first attempt: it landed, and its acknowledgement never came back.
        first = await d.bus.publish(events_subject(sid), dumps(start),
                                    {"Nats-Msg-Id": f"{sid}:2", "Nats-Expected-Last-Subject-Sequence": str(tail)})
        assert await d.bus.append_event(start, tail) == first.seq
        assert [e["seq"] for e, _ in await d.bus.read_events(sid)] == [1, 2]
        # Another writer's event for the same seq still loses.
        with pytest.raises(WrongLastSequence):
            await d.bus.append_event({**start, "runner": str(uuid.uuid4())}, tail)


@pytest.mark.both_loops
async def test_a_publish_rides_through_a_stream_that_does_not_answer(tmp_path: Path) -> None:
    """Was: the first "no responders" answer failed the publish."""
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        await d.consumer.stop()  # nothing takes envelopes: what lands stays in SIGNALS
        sid = str(uuid.uuid4())
        envelope = {"workspaceId": "core", "signalId": "echo", "sessionId": sid}
        before = attempts(d)
        async with signals_refusing(d):
            sent = asyncio.ensure_future(d.bus.publish_envelope(envelope))
            await until(lambda: attempts(d) >= before + 2 or sent.done())  # refused, and sent again
            assert not sent.done(), sent.exception()
        await asyncio.wait_for(sent, 10)
        assert await signals_messages(d) == 1


@pytest.mark.both_loops
async def test_a_trigger_waits_for_the_bus_instead_of_being_refused(tmp_path: Path) -> None:
    """The accept pipeline's two writes ride through too: the caller gets its 202 once SIGNALS answers again.
    Was: 503 `bus_unavailable` at the first "no responders"."""
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        await d.consumer.stop()
        req = TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1}, trigger="http")
        before = attempts(d)
        async with signals_refusing(d):
            accepting = asyncio.ensure_future(d.accept.accept(req))
            await until(lambda: attempts(d) >= before + 3 or accepting.done())  # both writes, and a retry
            assert not accepting.done(), accepting.exception()
        accepted = await asyncio.wait_for(accepting, 10)
        assert accepted.status == "queued"
        assert await signals_messages(d) == 1
        view = d.store.view(accepted.session_id)
        assert view is not None and view["status"] == "queued"


async def test_a_bus_silent_past_the_ride_through_still_refuses(tmp_path: Path) -> None:
    """Past its ride-through (half of ATLAS_BUS_RETRY) an accept gives up: 503, and its record ends failed."""
    async with running(tmp_path / "home", (FIXTURES / "core",), bus_retry_s=1.0) as d:
        req = TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1}, trigger="http")
        async with signals_refusing(d):
            with pytest.raises(Exception) as err:
                await d.accept.accept(req)
        assert getattr(err.value, "code", None) == "bus_unavailable"
        (session,) = d.store.rm.list_sessions(workspace_id="core")[0]
        assert session["status"] == "failed" and session["errorCode"] == "bus_unavailable"


async def test_a_session_start_riding_through_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    """A `session:start` that landed while its acknowledgement is still awaited (a leader election) names this
    daemon as the runner of a session it has not launched yet. Was: recovery, or a redelivered envelope, took it
    for an orphan of this daemon and ended it `interrupted` although nothing died (test_nats_node_loss.py flaked)."""
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        await d.consumer.stop()  # the test starts the session itself
        req = TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1}, trigger="http")
        sid = (await d.accept.accept(req)).session_id
        writer = await SessionWriter.resume(d.session_log, d.store, sid)
        env = envelope_from_queued((await d.bus.read_events(sid))[0][0])
        ws = d.workspaces.get("core")
        assert ws is not None
        # The attempt that landed, long enough ago that recovery would call it an orphan of this daemon. (Its bytes
        # differ from the attempt `begin` sends below, which therefore ends up taking it for another writer's and
        # returns False; what is tested is what recovery does while that attempt is still on its way.)
        old = format_iso(datetime.now(UTC) - timedelta(seconds=60))
        landed = {"type": "session:start", "sessionId": sid, "seq": 2, "timestamp": old, "workspaceId": "core",
                  "jobName": "echo", "task": "echo", "signalId": "echo", "correlationId": env["correlationId"],
                  "rootSessionId": sid, "depth": 0, "plannedSteps": ws.plans["echo"], "runner": d.daemon_id}
        ack = await d.bus.publish(events_subject(sid), dumps(landed),
                                  {"Nats-Msg-Id": f"{sid}:2",
                                   "Nats-Expected-Last-Subject-Sequence": str(writer.stream_seq)})
        d.store.apply(landed, ack.seq)  # what a daemon that follows the log shows
        before = attempts(d)
        async with stream_refusing(d, SESSION_EVENTS):
            beginning = asyncio.ensure_future(d.lifecycle.begin(ws, "echo", env, writer))
            await until(lambda: attempts(d) >= before + 2 or beginning.done())  # refused, and sent again
            assert not beginning.done(), beginning.exception()
            assert d.lifecycle.is_running(sid)
            recovering = asyncio.ensure_future(d.recovery.run_once(at_start=False))
            # Recovery is done, or stuck sending its `session:complete` into the refusing stream.
            await until(lambda: recovering.done() or attempts(d) >= before + 4)
        await asyncio.wait_for(recovering, 10)
        await asyncio.wait_for(beginning, 10)
        assert [e["type"] for e, _ in await d.bus.read_events(sid)] == ["session:queued", "session:start"]
        # Once nothing is starting or running it, the same pass does end it (the test can tell the two apart).
        assert not d.lifecycle.is_running(sid)
        await d.recovery.run_once(at_start=False)
        last = await d.bus.last_event(sid)
        assert last is not None and last[0]["type"] == "session:complete" and last[0]["status"] == "interrupted"
