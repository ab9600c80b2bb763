"""An active session whose marker never landed is still settled (spec §8.1).

The runner writes `session:start` (which names it) and then its SESSION_INFLIGHT marker; if it dies, or loses the
bus, between the two, only the log knows the session is running. Recovery finds such sessions in the read model and
applies the marker rules with the runner taken from `session:start`. The events are put on the bus directly: they
stand for that runner's writes. Real nats-server and SQLite.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atlas.bus.client import KV_INFLIGHT
from atlas.sessions.events import format_iso
from tests.daemon_proc import FIXTURES
from tests.inproc import running


async def test_active_session_without_marker_of_a_dead_runner_is_interrupted(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=1.0) as d:
        sid, dead_runner = str(uuid.uuid4()), str(uuid.uuid4())
        started = format_iso(datetime.now(UTC) - timedelta(seconds=30))  # well past 2 × ATLAS_ACK_WAIT
        common = {"workspaceId": "core", "jobName": "slow", "signalId": "slow", "task": "slow", "trigger": "http",
                  "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": []}
        # The dead runner's writes, as they reach this daemon's store (as the materialiser would apply them).
        tail = 0
        steps: list[tuple[str, dict[str, Any]]] = [("session:queued", {"payload": {}}),
                                                   ("session:start", {"runner": dead_runner})]
        for seq, (kind, extra) in enumerate(steps, start=1):
            event = {"type": kind, "sessionId": sid, "seq": seq, "timestamp": started, **common, **extra}
            tail = await d.bus.append_event(event, tail)
            d.store.apply(event, tail)
        view = d.store.view(sid)
        assert view is not None and view["status"] == "active"
        assert await d.bus.kv_get(KV_INFLIGHT, sid) is None  # no marker: only the log knows

        await d.recovery.run_once(at_start=False)

        final = d.store.view(sid)
        assert final is not None and final["status"] == "interrupted" and final["errorCode"] == "interrupted"
        assert final["correlationId"] == common["correlationId"]
        assert (await d.bus.last_event(sid) or ({}, 0))[0].get("status") == "interrupted"


async def test_a_young_unmarked_session_is_left_alone(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), ack_wait_s=30.0) as d:
        sid = str(uuid.uuid4())
        common = {"workspaceId": "core", "jobName": "slow", "signalId": "slow", "task": "slow", "trigger": "http",
                  "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": []}
        tail = 0
        steps: list[tuple[str, dict[str, Any]]] = [("session:queued", {"payload": {}}),
                                                   ("session:start", {"runner": str(uuid.uuid4())})]
        for seq, (kind, extra) in enumerate(steps, start=1):
            event = {"type": kind, "sessionId": sid, "seq": seq, "timestamp": format_iso(datetime.now(UTC)),
                     **common, **extra}
            tail = await d.bus.append_event(event, tail)
            d.store.apply(event, tail)
        await d.recovery.run_once(at_start=False)
        view = d.store.view(sid)
        assert view is not None and view["status"] == "active"  # its marker may still be on the way
