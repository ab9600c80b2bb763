"""The runtime's session paths over an in-memory bus and session log: milliseconds each, no nats-server.

Beside the real-NATS tests of the same behaviour (test_api_full.py, test_recovery_*.py, test_cancel_concurrent.py),
which stay: these pin the decisions of the accept pipeline, the consumer, the lifecycle, the concurrency control
and recovery, wired exactly as the composition root wires them (see `tests.unit.harness`).
"""

from __future__ import annotations

from pathlib import Path

from atlas.bus.client import KV_CONCURRENCY, KV_INFLIGHT, KV_METADATA
from atlas.sessions import events
from atlas.sessions.writer import SessionWriter
from tests.unit.harness import DAEMON_ID, Runtime, runtime


async def test_a_trigger_is_queued_started_run_and_finalised(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        accepted = await rt.trigger("echo", {"n": 1})
        sid = accepted.session_id
        assert rt.types(sid) == ["session:queued"]  # durable before accept() returns (spec §6.4)
        (delivery,) = await rt.deliver()
        assert delivery.settled == "ack"
        await rt.settle()
        assert rt.types(sid) == ["session:queued", "session:start", "step:start", "step:complete",
                                 "session:complete"]
        _, start, *_, complete = rt.log.events(sid)
        assert start["runner"] == DAEMON_ID
        assert complete["status"] == "completed" and complete["durationMs"] >= 0
        view = rt.store.view(sid)
        assert view is not None and view["status"] == "completed" and {"n": 1} in view["results"].values()
        summary = await rt.bus.kv_get(KV_METADATA, sid)
        assert summary is not None and summary[0]["status"] == "completed"
        assert rt.slots.free == 8  # the run gave its slot back


async def test_a_queue_key_parks_the_second_trigger_and_promotes_it_when_the_holder_ends(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        first = (await rt.trigger("hold-queue", {"duration": 60})).session_id
        await rt.deliver()
        assert rt.lifecycle.is_running(first)
        second = (await rt.trigger("hold-queue", {"duration": 0})).session_id
        (parked,) = await rt.deliver()
        # Parked: its log says what it waits for (issue #16), before its marker is written.
        assert parked.settled == "ack" and rt.types(second) == ["session:queued", "session:waiting"]
        assert rt.log.events(second)[1]["waitingFor"] == {"reason": "concurrency", "sessionIds": [first]}
        marker = await rt.bus.kv_get(KV_INFLIGHT, second)
        assert marker is not None and marker[0]["parked"] and marker[0]["envelope"]["sessionId"] == second
        record = await rt.bus.kv_get(KV_CONCURRENCY, "core.hold-queue")
        assert record is not None and record[0] == {"holders": [first], "queue": [second]}

        await rt.lifecycle.cancel(first, "cancelled", "cancelled_by_user", "Cancelled by the test")
        await rt.settle()
        assert rt.log.events(first)[-1]["status"] == "cancelled"
        assert rt.types(second)[-1] == "session:complete" and rt.log.events(second)[-1]["status"] == "completed"
        assert rt.log.events(second)[2]["runner"] == DAEMON_ID  # session:start follows session:waiting
        assert await rt.bus.kv_get(KV_INFLIGHT, second) is None  # the marker did its job
        record = await rt.bus.kv_get(KV_CONCURRENCY, "core.hold-queue")
        assert record is not None and record[0] == {"holders": [], "queue": []}


async def test_a_skip_key_ends_the_second_trigger_while_the_first_runs(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        first = (await rt.trigger("hold-skip", {"duration": 60})).session_id
        await rt.deliver()
        second = (await rt.trigger("hold-skip", {"duration": 0})).session_id
        (skipped,) = await rt.deliver()
        assert skipped.settled == "ack"
        assert rt.types(second) == ["session:queued", "session:complete"]
        end = rt.log.events(second)[-1]
        assert end["status"] == "skipped" and end["errorCode"] == "skipped-duplicate" and first in end["error"]
        assert end["duplicateOf"] == first  # the UI links it (issue #16)
        await rt.lifecycle.cancel(first, "cancelled", "cancelled_by_user", "Cancelled by the test")
        await rt.settle()
        third = (await rt.trigger("hold-skip", {"duration": 0})).session_id  # the key is free again
        await rt.deliver()
        await rt.settle()
        assert rt.log.events(third)[-1]["status"] == "completed"


async def test_a_replace_key_cancels_the_running_session_and_starts_the_new_one(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        first = (await rt.trigger("hold-replace", {"duration": 60})).session_id
        await rt.deliver()
        second = (await rt.trigger("hold-replace", {"duration": 0})).session_id
        await rt.deliver()  # waits (up to the grace) for the replaced session to end, then starts its successor
        await rt.settle()
        replaced = rt.log.events(first)[-1]
        assert replaced["status"] == "cancelled" and replaced["errorCode"] == "replaced"
        assert rt.log.events(second)[-1]["status"] == "completed"


async def test_recovery_interrupts_a_session_whose_runner_is_gone(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        sid = (await rt.trigger("echo", {"n": 2})).session_id
        rt.bus.signals.clear()  # another daemon took the envelope, started the session, then died
        writer = await SessionWriter.resume(rt.log, rt.store, sid)  # type: ignore[arg-type]
        view = rt.store.view(sid)
        assert view is not None
        await writer.append(events.start(
            sessionId=sid, seq=writer.next_seq, workspaceId="core", jobName="echo", task="echo", signalId="echo",
            correlationId=view["correlationId"], rootSessionId=sid, depth=0, plannedSteps=[], runner="gone-daemon"))
        await rt.recovery.run_once(at_start=False)  # no heartbeat of gone-daemon in DAEMONS
        assert rt.types(sid) == ["session:queued", "session:start", "session:complete"]
        end = rt.log.events(sid)[-1]
        assert end["status"] == "interrupted" and end["errorCode"] == "interrupted" and "durationMs" in end
        summary = await rt.bus.kv_get(KV_METADATA, sid)
        assert summary is not None and summary[0]["status"] == "interrupted"


async def test_recovery_leaves_a_live_runners_session_alone(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        sid = (await rt.trigger("echo", {"n": 3})).session_id
        rt.bus.signals.clear()
        await rt.bus.kv_put("DAEMONS", "live-daemon", {"url": "http://x", "pid": 1, "version": "0",
                                                       "startedAt": "2000-01-01T00:00:00.000Z"})
        writer = await SessionWriter.resume(rt.log, rt.store, sid)  # type: ignore[arg-type]
        await writer.append(events.start(
            sessionId=sid, seq=writer.next_seq, workspaceId="core", jobName="echo", task="echo", signalId="echo",
            correlationId=accepted_correlation(rt, sid), rootSessionId=sid, depth=0, plannedSteps=[],
            runner="live-daemon"))
        await rt.recovery.run_once(at_start=False)
        assert rt.types(sid) == ["session:queued", "session:start"]


async def test_cancelling_a_queued_session_ends_it_and_its_envelope_is_then_dropped(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        sid = (await rt.trigger("echo", {"n": 4})).session_id
        await rt.lifecycle.cancel(sid, "cancelled", "cancelled_by_user", "Cancelled by the test")
        assert rt.types(sid) == ["session:queued", "session:complete"]
        assert rt.log.events(sid)[-1]["status"] == "cancelled"
        (delivery,) = await rt.deliver()  # the envelope arrives after the cancel: never started (spec §8.3)
        assert delivery.settled == "ack"
        await rt.settle()
        assert rt.types(sid) == ["session:queued", "session:complete"]
        assert rt.slots.free == 8


def accepted_correlation(rt: Runtime, sid: str) -> str:
    view = rt.store.view(sid)
    assert view is not None
    return str(view["correlationId"])
