"""A daemon on its embedded bus is the only writer of SESSION_EVENTS (see atlas.sessions.materializer).

It does not follow the stream; its own acknowledged writes move the read model's resume point, a write whose
acknowledgement never arrived is read back, a restart catches up from the resume point, and a second daemon that
connects to the embedded bus anyway is followed. Real nats-server and SQLite throughout; events are put on the bus
directly only to stand for "a write that landed without its acknowledgement" and "another daemon's write".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from atlas.bus.client import SESSION_EVENTS, events_subject
from atlas.jsoncodec import dumps
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.daemon import Daemon
from atlas.sessions.events import now_iso
from tests import inproc
from tests.daemon_proc import FIXTURES


def running(home: Path, nats_url: str | None = None) -> AbstractAsyncContextManager[Daemon]:
    return inproc.running(home, (FIXTURES / "core",), nats_url)


async def run_echo(d: Daemon, n: int) -> list[str]:
    sids = [(await d.accept.accept(TriggerRequest("core", "echo", {"n": i}, "http"))).session_id for i in range(n)]
    for sid in sids:
        assert (await d.store.wait_terminal(sid, 30))["status"] == "completed"
    return sids


async def last_seq(d: Daemon) -> int:
    return int((await d.bus.js.stream_info(SESSION_EVENTS)).state.last_seq)


async def until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def queued_event(sid: str) -> dict[str, Any]:
    return {"type": "session:queued", "sessionId": sid, "seq": 1, "timestamp": now_iso(), "workspaceId": "core",
            "jobName": "echo", "signalId": "echo", "task": "echo", "trigger": "http",
            "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": [],
            "payload": {"n": 0}}


async def test_own_writes_move_the_resume_point_without_following(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as d:
        assert not d.materializer.follow and d.store.sole_writer
        await run_echo(d, 20)
        end = await last_seq(d)
        await until(lambda: d.store.rm.get_stream_seq() == end)  # every event of all 20 sessions is ours, applied


async def test_a_write_without_its_acknowledgement_is_read_back(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as d:
        await run_echo(d, 2)
        sid = str(uuid.uuid4())
        # Lands on the stream, but the store never hears of it: what a write whose ack was lost looks like.
        await d.bus.nc.publish(events_subject(sid), dumps(queued_event(sid)),  # type: ignore[union-attr]
                               headers={"Nats-Msg-Id": f"{sid}:1"})
        await d.bus.nc.flush()  # type: ignore[union-attr]
        await run_echo(d, 2)  # later writes of ours leave a gap below them
        assert d.store.gaps(), "the unacknowledged message shows as a gap"
        assert d.store.view(sid) is None
        assert await d.materializer.fill_gaps() >= 1
        assert d.store.gaps() == []
        view = d.store.view(sid)
        assert view is not None and view["status"] == "queued"
        end = await last_seq(d)
        await until(lambda: d.store.rm.get_stream_seq() == end)


async def test_restart_catches_up_from_the_resume_point(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with running(home) as d:
        sids = await run_echo(d, 5)
        end = await last_seq(d)
        await until(lambda: d.store.rm.get_stream_seq() == end)
    # The read model is thrown away: the next start folds the whole log again.
    for name in ("atlas.db", "atlas.db-wal", "atlas.db-shm"):
        (home / name).unlink(missing_ok=True)
    async with running(home) as d:
        for sid in sids:
            view = d.store.view(sid)
            assert view is not None and view["status"] == "completed"
        assert d.store.rm.get_stream_seq() >= end
        more = await run_echo(d, 3)
        end = await last_seq(d)
        await until(lambda: d.store.rm.get_stream_seq() == end)
        assert d.store.rm.count_by_status().get("completed") == len(sids) + len(more)


async def test_a_second_daemon_on_the_embedded_bus_is_followed(tmp_path: Path) -> None:
    async with running(tmp_path / "a") as a:
        assert a.embedded is not None and not a.materializer.follow
        async with running(tmp_path / "b", nats_url=a.embedded.url_with_token) as b:
            await until(lambda: a.materializer.follow)  # b said hello
            assert not a.store.sole_writer
            sids = await run_echo(b, 5)
            for sid in sids:
                view = await a.store.wait_terminal(sid, 15)  # b's sessions reach a's read model
                assert view["status"] == "completed"
            first = b.store.view(sids[0])
            assert first is not None
            rows, _ = a.store.rm.list_sessions(correlation_id=first["correlationId"], limit=5)
            assert [r["sessionId"] for r in rows] == [sids[0]]
