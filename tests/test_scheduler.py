"""The cron scheduler inside real daemons (spec §5.6; §13 items 17, 29, 30), driven by a fake clock.

The daemons run in this process with their embedded nats-server; `atlas.runtime.daemon.Scheduler` is patched to
get a `FakeClock`, so minutes pass by `advance()` and ticks are awaited directly (`scheduler.tick()`), never by
waiting for real time.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.api.app import create_app
from atlas.bus.client import KV_CRON_CLAIMS, KV_CRON_STATE
from atlas.runtime.daemon import Daemon
from atlas.runtime.scheduler import Scheduler
from tests import inproc
from tests.daemon_proc import FIXTURES

WS = "cron"
MINUTE_SIGNALS = ("every-minute", "catchup-minute", "skip-minute")
T0 = datetime(2026, 3, 28, 12, 0, 30, tzinfo=UTC)


class FakeClock:
    """Time that moves only when a test says so; `sleep` returns once `advance` has reached its deadline."""

    def __init__(self, start: datetime, *, wake_sleepers: bool = True) -> None:
        self.t = start
        self.wake_sleepers = wake_sleepers  # False: the schedulers' loops stay asleep, only direct ticks run
        self._waiters: set[asyncio.Event] = set()

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        deadline = self.t + timedelta(seconds=seconds)
        while self.t < deadline:
            event = asyncio.Event()
            self._waiters.add(event)
            try:
                await event.wait()
            finally:
                self._waiters.discard(event)

    def advance(self, delta: timedelta) -> datetime:
        self.t += delta
        if self.wake_sleepers:
            for event in list(self._waiters):
                event.set()
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(T0)
    monkeypatch.setattr("atlas.runtime.daemon.Scheduler", functools.partial(Scheduler, clock=fake))
    return fake


def running(home: Path, nats_url: str | None = None) -> AbstractAsyncContextManager[Daemon]:
    return inproc.running(home, (FIXTURES / "cron",), nats_url)


def sessions(daemon: Daemon, signal_id: str) -> list[dict[str, Any]]:
    rows, _ = daemon.store.rm.list_sessions(workspace_id=WS, signal_id=signal_id, limit=500)
    return rows


def payload(daemon: Daemon, sid: str) -> dict[str, Any]:
    view = daemon.store.view(sid)
    assert view is not None
    return view["payload"]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def state(daemon: Daemon, signal_id: str) -> dict[str, Any]:
    got = await daemon.bus.kv_get(KV_CRON_STATE, f"{WS}.{signal_id}")
    assert got is not None
    return got[0]


async def queued_order(daemon: Daemon, sids: list[str]) -> list[str]:
    """Sessions in acceptance order: by the SESSION_EVENTS sequence of their `session:queued`."""
    firsts = {sid: (await daemon.bus.read_events(sid))[0][1] for sid in sids}
    return sorted(sids, key=firsts.__getitem__)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition another task brings about (with a deadline), checking between event-loop turns."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- one tick


async def test_a_tick_is_a_schedule_session_with_its_own_correlation_id(tmp_path: Path, clock: FakeClock) -> None:
    async with running(tmp_path / "home") as d:
        for sig in MINUTE_SIGNALS:  # first sight: settled at start, nothing fired
            assert (await state(d, sig))["lastScheduled"] == iso(T0)
            assert sessions(d, sig) == []

        clock.advance(timedelta(seconds=30))  # 12:01:00
        await d.scheduler.tick()
        await d.scheduler.tick()  # the same instant again: nothing new
        (row,) = sessions(d, "every-minute")
        sid, cid = row["sessionId"], row["correlationId"]
        assert row["trigger"] == "schedule" and row["depth"] == 0 and row["rootSessionId"] == sid
        assert uuid.UUID(cid).version == 4 and str(uuid.UUID(cid)) == cid and cid != sid
        assert payload(d, sid) == {
            "scheduled": "2026-03-28T12:01:00.000Z",
            "timezone": "UTC",
            "nextRun": "2026-03-28T12:02:00.000Z",
            "actualFiredAt": "2026-03-28T12:01:00.000Z",
            "policy": "ontime",
        }
        view = await d.store.wait_terminal(sid, 30)
        assert view["status"] == "completed"
        for sig in MINUTE_SIGNALS:  # every policy fires an on-time tick
            assert len(sessions(d, sig)) == 1
            assert (await state(d, sig))["lastScheduled"] == "2026-03-28T12:01:00.000Z"
        claim = await d.bus.kv_get(KV_CRON_CLAIMS, f"{WS}.every-minute.{int(clock.now().timestamp())}")
        assert claim is not None and claim[0]["sessionId"] == sid and claim[0]["daemonId"] == d.daemon_id

        clock.advance(timedelta(minutes=1))  # 12:02:00: the next tick is a new tree
        await d.scheduler.tick()
        rows = sessions(d, "every-minute")
        assert len(rows) == 2 and len({r["correlationId"] for r in rows}) == 2
        assert (await state(d, "every-minute"))["lastResult"]["scheduled"] == "2026-03-28T12:02:00.000Z"


async def test_the_loop_fires_when_the_clock_reaches_the_slot(tmp_path: Path, clock: FakeClock) -> None:
    async with running(tmp_path / "home") as d:
        clock.advance(timedelta(seconds=29))  # 12:00:59: the loop's sleep has not ended
        clock.advance(timedelta(seconds=1))  # 12:01:00: it has
        await eventually(lambda: d.scheduler.last_tick == clock.now())
        (row,) = sessions(d, "every-minute")
        assert payload(d, row["sessionId"])["scheduled"] == "2026-03-28T12:01:00.000Z"


async def test_a_workspace_added_between_ticks_fires_its_first_slot(tmp_path: Path, clock: FakeClock) -> None:
    """First sight settles at the previous tick, not at the tick that notices it: 12:01 is not lost."""
    late = tmp_path / "late"
    late.mkdir()
    (late / "workspace.yml").write_text(
        'version: "1.0"\n'
        "workspace: { id: late, name: Late }\n"
        "signals: { tick: { provider: schedule, concurrency: concurrent, config: { schedule: '* * * * *' } } }\n"
        "jobs: { tick: { triggers: [ { signal: tick } ],\n"
        "                execution: { strategy: sequential, agents: [ atlas/echo ] } } }\n"
    )
    async with running(tmp_path / "home") as d:
        clock.advance(timedelta(seconds=20))  # 12:00:50: the workspace arrives between ticks
        await d.workspaces.add(late)
        clock.advance(timedelta(seconds=10))  # 12:01:00
        await d.scheduler.tick()
        rows, _ = d.store.rm.list_sessions(workspace_id="late", limit=10)
        assert [payload(d, r["sessionId"])["scheduled"] for r in rows] == ["2026-03-28T12:01:00.000Z"]
        assert payload(d, rows[0]["sessionId"])["policy"] == "ontime"


async def test_a_dst_gap_tick_fires_at_the_end_of_the_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`30 2 * * *` in Europe/Berlin on 29 March 2026: 02:30 does not exist, the tick comes at 03:00 CEST."""
    clock = FakeClock(datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC))
    monkeypatch.setattr("atlas.runtime.daemon.Scheduler", functools.partial(Scheduler, clock=clock))
    async with running(tmp_path / "home") as d:
        clock.advance(timedelta(seconds=30))  # 01:00:00Z = 03:00 CEST
        await d.scheduler.tick()
        (row,) = sessions(d, "nightly")
        assert payload(d, row["sessionId"]) == {
            "scheduled": "2026-03-29T01:00:00.000Z",
            "timezone": "Europe/Berlin",
            "nextRun": "2026-03-30T00:30:00.000Z",
            "actualFiredAt": "2026-03-29T01:00:00.000Z",
            "policy": "ontime",
        }


# ---------------------------------------------------------------- downtime (§13 item 29)


async def test_missed_slots_after_downtime_follow_each_policy(tmp_path: Path, clock: FakeClock) -> None:
    home = tmp_path / "home"
    async with running(home):
        pass  # first start at 12:00:30 settles every schedule there
    clock.advance(timedelta(minutes=2))  # down over 12:01 and 12:02; back at 12:02:30
    async with running(home) as d:  # the start-up tick handles the missed slots
        (coalesced,) = sessions(d, "every-minute")
        assert payload(d, coalesced["sessionId"]) == {
            "scheduled": "2026-03-28T12:02:00.000Z",
            "timezone": "UTC",
            "nextRun": "2026-03-28T12:03:00.000Z",
            "actualFiredAt": "2026-03-28T12:02:30.000Z",
            "policy": "coalesce",
            "missedCount": 2,
            "firstMissedAt": "2026-03-28T12:01:00.000Z",
        }

        caught = await queued_order(d, [r["sessionId"] for r in sessions(d, "catchup-minute")])
        assert [payload(d, sid)["scheduled"] for sid in caught] == ["2026-03-28T12:01:00.000Z",
                                                                     "2026-03-28T12:02:00.000Z"]
        assert {payload(d, sid)["policy"] for sid in caught} == {"catchup"}
        assert len({d.store.view(sid)["correlationId"] for sid in caught}) == 2  # type: ignore[index]

        assert sessions(d, "skip-minute") == []
        assert sessions(d, "nightly") == []
        for sig in MINUTE_SIGNALS:
            assert (await state(d, sig))["lastScheduled"] == "2026-03-28T12:02:00.000Z"
        for sid in [coalesced["sessionId"], *caught]:
            assert (await d.store.wait_terminal(sid, 30))["status"] == "completed"

        await d.scheduler.tick()  # the same moment again fires nothing more
        assert [len(sessions(d, s)) for s in MINUTE_SIGNALS] == [1, 2, 0]


# ---------------------------------------------------------------- two daemons, one cluster (§13 item 30)


async def test_two_daemons_on_one_nats_fire_each_tick_once(tmp_path: Path, clock: FakeClock,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock.wake_sleepers = False  # both daemons tick exactly when told to, at the same moment
    attempts: Counter[str] = Counter()

    def count_claims(daemon: Daemon) -> None:
        create = daemon.bus.kv_create

        async def kv_create(bucket: str, key: str, value: Any) -> int:
            if bucket == KV_CRON_CLAIMS:
                attempts[key] += 1
            return await create(bucket, key, value)

        monkeypatch.setattr(daemon.bus, "kv_create", kv_create)

    async with running(tmp_path / "a") as a:
        assert a.embedded is not None
        async with running(tmp_path / "b", nats_url=a.embedded.url_with_token) as b:
            assert a.daemon_id != b.daemon_id
            count_claims(a)
            count_claims(b)
            slots = []
            for _ in range(5):
                slots.append(clock.advance(timedelta(minutes=1)).replace(second=0))
                await asyncio.gather(a.scheduler.tick(), b.scheduler.tick())

            for sig in MINUTE_SIGNALS:
                sids = {r["sessionId"] for d in (a, b) for r in sessions(d, sig)}  # each accept is local first
                views = [await a.store.wait_terminal(sid, 30) for sid in sids]
                assert sorted(v["payload"]["scheduled"] for v in views) == [iso(s) for s in slots], sig
                assert all(v["status"] == "completed" and v["trigger"] == "schedule" for v in views)
                assert len({v["correlationId"] for v in views}) == len(slots)
                for slot in slots:
                    key = f"{WS}.{sig}.{int(slot.timestamp())}"
                    assert attempts[key] == 2  # both daemons went for the slot; the claim let one through
                    claim = await a.bus.kv_get(KV_CRON_CLAIMS, key)
                    assert claim is not None and claim[0]["sessionId"] in sids
                    assert claim[0]["daemonId"] in (a.daemon_id, b.daemon_id)


# ---------------------------------------------------------------- API


async def test_list_pause_and_resume_schedules(tmp_path: Path, clock: FakeClock) -> None:
    async with running(tmp_path / "home") as d:
        transport = httpx.ASGITransport(app=create_app(d))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
            r = await http.get("/api/schedules")
            assert r.status_code == 200
            entries = {e["signalId"]: e for e in r.json()["schedules"]}
            assert set(entries) == {*MINUTE_SIGNALS, "nightly"}
            assert entries["every-minute"] == {
                "workspaceId": WS, "signalId": "every-minute", "schedule": "* * * * *", "timezone": "UTC",
                "onMissed": "coalesce", "missedWindow": "24h", "concurrency": "concurrent", "paused": False,
                "nextRun": "2026-03-28T12:01:00.000Z", "lastScheduled": iso(T0),
            }
            assert entries["nightly"]["nextRun"] == "2026-03-29T01:00:00.000Z"  # 03:00 CEST, after the gap
            assert entries["nightly"]["timezone"] == "Europe/Berlin"

            r = await http.post(f"/api/schedules/{WS}/every-minute/pause")
            assert r.status_code == 200 and r.json()["paused"] is True and r.json()["nextRun"] is None
            clock.advance(timedelta(seconds=30))  # 12:01:00 while paused
            await d.scheduler.tick()
            assert sessions(d, "every-minute") == [] and len(sessions(d, "skip-minute")) == 1

            clock.advance(timedelta(seconds=30))
            r = await http.post(f"/api/schedules/{WS}/every-minute/resume")
            assert r.status_code == 200 and r.json()["paused"] is False
            assert r.json()["nextRun"] == "2026-03-28T12:02:00.000Z"
            clock.advance(timedelta(seconds=30))  # 12:02:00
            await d.scheduler.tick()
            (row,) = sessions(d, "every-minute")  # 12:01 passed while paused and is not made up
            assert payload(d, row["sessionId"])["policy"] == "ontime"
            await d.store.wait_terminal(row["sessionId"], 30)

            entry = next(e for e in (await http.get("/api/schedules")).json()["schedules"]
                         if e["signalId"] == "every-minute")
            assert entry["lastResult"] == {"sessionId": row["sessionId"], "correlationId": row["correlationId"],
                                           "scheduled": "2026-03-28T12:02:00.000Z", "status": "completed"}

            for path in (f"/api/schedules/{WS}/nope/pause", "/api/schedules/nows/every-minute/resume"):
                r = await http.post(path)
                assert r.status_code == 404
                assert r.json()["error"]["code"] == "schedule_not_found"
