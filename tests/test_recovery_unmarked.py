"""Running sessions have no marker; recovery settles them from the read model and the log (spec §8.1 as amended
in docs/decisions.md).

`session:start` names the runner. Recovery lists the active sessions of the read model and ends those whose runner
is gone (its heartbeat expired) as `interrupted`; a session of a live runner is left alone, however young or old.
The events are put on the bus directly: they stand for that runner's writes. Real nats-server and SQLite.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atlas.bus.client import KV_DAEMONS, KV_INFLIGHT
from atlas.sessions.events import format_iso
from tests.daemon_proc import FIXTURES
from tests.inproc import running


async def _started_elsewhere(d: Any, runner: str, started: str) -> str:
    """A session started by `runner`, as its writes reach this daemon's store."""
    sid = str(uuid.uuid4())
    common = {"workspaceId": "core", "jobName": "slow", "signalId": "slow", "task": "slow", "trigger": "http",
              "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": []}
    tail = 0
    steps: list[tuple[str, dict[str, Any]]] = [("session:queued", {"payload": {}}),
                                               ("session:start", {"runner": runner})]
    for seq, (kind, extra) in enumerate(steps, start=1):
        event = {"type": kind, "sessionId": sid, "seq": seq, "timestamp": started, **common, **extra}
        tail = await d.bus.append_event(event, tail)
        d.store.apply(event, tail)
    return sid


async def test_active_session_without_marker_of_a_dead_runner_is_interrupted(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        # The dead runner's writes, as they reach this daemon's store (as the materialiser would apply them).
        sid = await _started_elsewhere(d, str(uuid.uuid4()), format_iso(datetime.now(UTC) - timedelta(seconds=30)))
        view = d.store.view(sid)
        assert view is not None and view["status"] == "active"
        assert await d.bus.kv_get(KV_INFLIGHT, sid) is None  # no marker: only the log knows

        await d.recovery.run_once(at_start=False)

        final = d.store.view(sid)
        assert final is not None and final["status"] == "interrupted" and final["errorCode"] == "interrupted"
        assert final["correlationId"] == view["correlationId"]
        assert (await d.bus.last_event(sid) or ({}, 0))[0].get("status") == "interrupted"


async def test_a_session_of_a_live_runner_is_left_alone(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        runner = str(uuid.uuid4())
        await d.bus.kv_put(KV_DAEMONS, runner, {"url": "http://127.0.0.1:1", "pid": 1})  # its heartbeat
        old = await _started_elsewhere(d, runner, format_iso(datetime.now(UTC) - timedelta(seconds=30)))
        young = await _started_elsewhere(d, runner, format_iso(datetime.now(UTC)))
        await d.recovery.run_once(at_start=False)
        for sid in (old, young):
            view = d.store.view(sid)
            assert view is not None and view["status"] == "active"
        assert (await d.bus.last_event(old) or ({}, 0))[0].get("type") == "session:start"


async def test_a_young_session_of_a_dead_runner_is_interrupted_at_once(tmp_path: Path) -> None:
    """Without markers there is nothing on its way to wait for: a runner without a heartbeat is gone."""
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=30.0) as d:
        sid = await _started_elsewhere(d, str(uuid.uuid4()), format_iso(datetime.now(UTC)))
        await d.recovery.run_once(at_start=False)
        view = d.store.view(sid)
        assert view is not None and view["status"] == "interrupted"


async def test_a_running_session_leaves_no_marker(tmp_path: Path) -> None:
    """One write fewer at start and one fewer at the end: SESSION_INFLIGHT holds parked sessions only."""
    from atlas.runtime.accept import TriggerRequest

    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        accepted = await d.accept.accept(TriggerRequest(workspace_id="core", signal_id="slow",
                                                        payload={"duration": "300ms"}, trigger="http"))
        sid = accepted.session_id
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while sid not in d.runs:
            assert datetime.now(UTC) < deadline, "the session never started"
            await asyncio.sleep(0.01)  # polling a condition with a deadline
        assert await d.bus.kv_get(KV_INFLIGHT, sid) is None
        assert await d.recovery.runner_of(sid) == d.daemon_id
        view = await d.store.wait_terminal(sid, 20)
        assert view["status"] == "completed"
        assert await d.bus.kv_keys(KV_INFLIGHT) == []
