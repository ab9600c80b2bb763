"""`atlas admin rebuild-readmodel` (issue #15, items 2 and 6): the JetStream log refills an emptied or damaged read
model, a second run writes nothing, and a SQLite home moves to PostgreSQL and back.

Real parts: atlasd child processes with their embedded nats-server, a private PostgreSQL 15 server (`tests/pg.py`),
the `atlas` CLI as a subprocess. The rows are read and damaged with plain SQL, as an operator's accident would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from atlas.bus.client import SESSION_EVENTS, events_subject
from atlas.jsoncodec import dumps
from atlas.runtime.accept import TriggerRequest
from atlas.sessions import events as ev
from atlas.sessions import materializer
from tests import inproc
from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess, wait_for
from tests.pg import PgServer

TOKEN = "rebuild-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def execute(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def snapshot(dsn: str) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """Every row as (status, last_seq, summary): what a rebuild must give back."""
    found = rows(dsn, "SELECT session_id, status, last_seq, summary_json FROM sessions")
    return {sid: (status, int(last_seq), json.loads(summary)) for sid, status, last_seq, summary in found}


def rebuild(d: DaemonProcess, *extra: str) -> dict[str, Any]:
    done = subprocess.run([ATLAS, "admin", "rebuild-readmodel", "--url", d.url, "--json", *extra],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_sessions(d: DaemonProcess, n: int, headers: dict[str, str] | None = None) -> list[str]:
    """`n` echo sessions, each waited for to its end (nowait triggers: the runs overlap)."""
    sids = []
    for i in range(n):
        r = httpx.post(f"{d.url}/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": i}},
                       headers=headers, timeout=30)
        assert r.status_code == 202, r.text
        sids.append(r.json()["sessionId"])
    for sid in sids:
        wait_for(lambda sid=sid: status_of(d, sid, headers) in TERMINAL, 30, what=f"session {sid} to end")
    return sids


def status_of(d: DaemonProcess, sid: str, headers: dict[str, str] | None = None) -> str | None:
    r = httpx.get(f"{d.url}/api/sessions/{sid}", headers=headers, timeout=10)
    return r.json().get("status") if r.status_code == 200 else None


def listed(d: DaemonProcess, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Every session the daemon lists, with its status (paged to the end)."""
    out: dict[str, str] = {}
    params: dict[str, Any] = {"limit": 100}
    while True:
        r = httpx.get(f"{d.url}/api/sessions", params=params, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        out.update({s["sessionId"]: s["status"] for s in body["sessions"]})
        if "nextCursor" not in body:
            return out
        params["cursor"] = body["nextCursor"]


def test_rebuild_refills_an_emptied_and_a_damaged_postgresql_read_model(pg_dsn: str, tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"],
                      {"ATLAS_DATABASE_URL": pg_dsn, "ATLAS_TOKEN": TOKEN}).start()
    try:
        sids = run_sessions(d, 6, AUTH)
        wait_for(lambda: {s for s, (status, _, _) in snapshot(pg_dsn).items() if status == "completed"} == set(sids),
                 what="six completed rows in PostgreSQL")
        before = snapshot(pg_dsn)
        events = sum(last_seq for _, last_seq, _ in before.values())  # seq runs 1..last_seq in each session's log

        # An operator action: without the token it is refused like every other route.
        refused = httpx.post(f"{d.url}/api/admin/rebuild-readmodel", timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"

        execute(pg_dsn, "TRUNCATE sessions")
        assert listed(d, AUTH) == {}
        first = rebuild(d, "--token", TOKEN)
        assert first == {"events": events, "sessions": 6, "written": 6, "partial": 0, "readModel": "postgresql"}
        assert snapshot(pg_dsn) == before
        assert listed(d, AUTH) == dict.fromkeys(sids, "completed")

        # A row that went backwards: its status column and listed summary say queued, its last_seq 1.
        damaged = sids[2]
        summary = json.dumps({**before[damaged][2], "status": "queued"})
        execute(pg_dsn, "UPDATE sessions SET status = 'queued', last_seq = 1, summary_json = %s WHERE session_id = %s",
                (summary, damaged))
        assert listed(d, AUTH)[damaged] == "queued"
        second = rebuild(d, "--token", TOKEN)
        assert second == {**first, "written": 1}
        assert snapshot(pg_dsn) == before
        assert listed(d, AUTH)[damaged] == "completed"

        # Idempotent: nothing left to write, the same rows.
        third = rebuild(d, "--token", TOKEN)
        assert third == {**first, "written": 0}
        assert snapshot(pg_dsn) == before
        human = subprocess.run([ATLAS, "admin", "rebuild-readmodel", "--url", d.url, "--token", TOKEN],
                               capture_output=True, text=True, timeout=120)
        assert human.returncode == 0, human.stderr
        assert "postgresql" in human.stdout and "rows written  0" in human.stdout
    finally:
        d.stop()


def test_a_sqlite_home_moves_to_postgresql_and_still_works_without_it(pg: PgServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = DaemonProcess(home, [FIXTURES / "core"]).start()
    try:
        on_sqlite = run_sessions(d, 4)
        assert listed(d) == dict.fromkeys(on_sqlite, "completed")
        assert rebuild(d)["readModel"] == "sqlite"  # the same command serves the embedded default
    finally:
        assert d.stop() == 0

    dsn = pg.create_database()
    assert rows(dsn, "SELECT to_regclass('sessions')") == [(None,)]  # an empty database: no schema yet
    moved = DaemonProcess(home, [FIXTURES / "core"], {"ATLAS_DATABASE_URL": dsn}).start()
    try:
        # The database's resume point starts at 0, so the start-up catch-up may have written rows already; the
        # rebuild reads the whole log either way. What is checked: it counts every event of the four sessions,
        # and afterwards each of them is a completed row in PostgreSQL, listed by this daemon.
        result = rebuild(moved)
        assert result["readModel"] == "postgresql" and result["sessions"] == 4
        assert {sid: status for sid, (status, _, _) in snapshot(dsn).items()} == dict.fromkeys(on_sqlite, "completed")
        assert result["events"] == sum(last_seq for _, last_seq, _ in snapshot(dsn).values())
        assert listed(moved) == dict.fromkeys(on_sqlite, "completed")
        on_postgres = run_sessions(moved, 1)
    finally:
        assert moved.stop() == 0

    # Back without the URL: the SQLite file is used again, catches up with what ran meanwhile, and takes triggers.
    again = DaemonProcess(home, [FIXTURES / "core"]).start()
    try:
        assert listed(again) == dict.fromkeys(on_sqlite + on_postgres, "completed")
        later = run_sessions(again, 1)
        assert listed(again) == dict.fromkeys(on_sqlite + on_postgres + later, "completed")
    finally:
        assert again.stop() == 0


async def until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_rebuild_leaves_the_sole_writer_bookkeeping_alone_and_skips_sessions_without_their_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, embedded bus (the daemon owns the log and moves the resume point with its own writes); events
    are put on the bus directly only to stand for a session whose head aged out and for a late `session:summary`."""
    async with inproc.running(tmp_path / "home", (FIXTURES / "core",)) as d:
        sids = [(await d.accept.accept(TriggerRequest("core", "echo", {"n": i}, "http"))).session_id
                for i in range(3)]
        for sid in sids:
            assert (await d.store.wait_terminal(sid, 30))["status"] == "completed"

        async def stream_end() -> int:
            return int((await d.bus.js.stream_info(SESSION_EVENTS)).state.last_seq)

        end = await stream_end()
        await until(lambda: d.store.rm.get_stream_seq() == end)
        assert d.store.sole_writer
        result = await d.materializer.rebuild_all()
        assert result == {"events": end, "sessions": 3, "written": 0, "partial": 0}
        assert d.store.sole_writer and d.store.rm.get_stream_seq() == end and d.store.gaps() == []
        later = (await d.accept.accept(TriggerRequest("core", "echo", {"n": 9}, "http"))).session_id
        assert (await d.store.wait_terminal(later, 30))["status"] == "completed"
        end = await stream_end()
        await until(lambda: d.store.rm.get_stream_seq() == end)  # own writes still move the resume point

        # A session whose first two events have left the stream, and a summary after a terminal event. With one
        # session a batch, the ended session's view is written and dropped before its summary comes: it is folded
        # again from its own log.
        headless = str(uuid.uuid4())
        late = sids[0]
        last = int(d.store.view(late)["lastSeq"])  # type: ignore[index]
        nc = d.bus.nc
        assert nc is not None
        tail = {**ev.summary(sessionId=headless, seq=3, summary="tail"), "workspaceId": "core"}
        await nc.publish(events_subject(headless), dumps(tail), headers={"Nats-Msg-Id": f"{headless}:3"})
        note = ev.summary(sessionId=late, seq=last + 1, summary="written late")
        await nc.publish(events_subject(late), dumps(note), headers={"Nats-Msg-Id": f"{late}:{last + 1}"})
        await nc.flush()
        monkeypatch.setattr(materializer._Refill, "BATCH", 1)
        result = await d.materializer.rebuild_all()
        assert result["partial"] == 1 and result["sessions"] == 4
        assert d.store.rm.get_view(headless) is None
        row = d.store.rm.get_view(late)
        assert row is not None and row["lastSeq"] == last + 1 and row["status"] == "completed"
        assert row["aiSummary"]["summary"] == "written late"
