"""Daemons on one JetStream cluster sharing a PostgreSQL read model (issue #15): a session accepted by one daemon is
listed by correlationId on another on the first try, because its queued row is committed before the 202.

Real parts: a 3-node nats-server cluster, two atlasd processes, a private PostgreSQL 15 server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from atlas.api.app import create_app
from atlas.jsoncodec import loads
from atlas.runtime.accept import TriggerRequest
from tests.cluster.conftest import DaemonFactory
from tests.cluster.harness import ClusterDaemon, NatsCluster, http
from tests.daemon_proc import FIXTURES, wait_for
from tests.inproc import running
from tests.pg import pg_server

pytestmark = pytest.mark.cluster


def test_a_202_from_one_daemon_is_listed_by_another_on_the_first_try(daemons: DaemonFactory, pg_dsn: str) -> None:
    a, b = daemons(2, env={"ATLAS_DATABASE_URL": pg_dsn})

    def accept_then_look(n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        r = http.post(f"{a.url}/api/workspaces/cluster/signals/echo?nowait=true", json={"payload": {"n": n}},
                      timeout=30)
        assert r.status_code == 202, r.text
        accepted = r.json()
        listed = http.get(f"{b.url}/api/sessions", params={"correlationId": accepted["correlationId"]}, timeout=30)
        assert listed.status_code == 200, listed.text
        return accepted, listed.json()["sessions"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(accept_then_look, range(64)))
    for accepted, listed in results:
        assert [s["sessionId"] for s in listed] == [accepted["sessionId"]], (accepted, listed)
        assert listed[0]["correlationId"] == accepted["correlationId"]


async def test_the_queued_row_is_committed_before_the_accept_returns(
    nats_cluster: NatsCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """In process, with daemon A's write-behind delay raised to a minute and daemon B's materialiser stopped (it
    would otherwise write the row itself from the log): only the commit the accept waits for can put the row where
    B looks."""
    async with running(tmp_path / "a", [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn) as a, \
            running(tmp_path / "b", [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn) as b:
        a.store.FLUSH_DELAY_S = 60.0
        await b.materializer.stop()
        for n in range(5):
            accepted = await a.accept.accept(TriggerRequest("cluster", "slow", {"n": n}, "http"))
            page, _ = b.store.rm.list_sessions(correlation_id=accepted.correlation_id)
            assert [s["sessionId"] for s in page] == [accepted.session_id]



# ------------------------------------------------------------------ each session written once, by its writer


def pg_rows(dsn: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every row of the shared read model: sessionId -> (status, view)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {sid: (status, loads(view)) for sid, status, view
                in conn.execute("SELECT session_id, status, view_json FROM sessions").fetchall()}


async def until_async(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_sessions_another_daemon_runs_are_written_by_it_alone(
    nats_cluster: NatsCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """A accepts and runs nothing (no runner slots), B runs everything, C only looks on. No daemon follows the log:
    C receives next to no messages while 30 sessions (over 100 events) are written, A keeps none of the sessions it
    handed over in memory, and every row is complete in the shared database, written by B."""
    homes = [tmp_path / name for name in "abc"]
    async with running(homes[0], [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn,
                       max_concurrent_sessions=0) as a, \
            running(homes[1], [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn), \
            running(homes[2], [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn,
                    max_concurrent_sessions=0) as c:
        assert c.bus.nc is not None
        received_before = c.bus.nc.stats["in_msgs"]
        accepted = [await a.accept.accept(TriggerRequest("cluster", "echo", {"n": n}, "http")) for n in range(30)]
        sids = {acc.session_id for acc in accepted}
        await until_async(lambda: all(pg_rows(pg_dsn).get(sid, ("",))[0] == "completed" for sid in sids), 60,
                          "every session completed in the shared read model")
        received = c.bus.nc.stats["in_msgs"] - received_before
        events = sum(int(view["lastSeq"]) for _, view in pg_rows(pg_dsn).values())
        assert events > 100
        assert received < 30, f"the idle daemon received {received} messages while {events} events were written"
        rows = pg_rows(pg_dsn)
        for acc in accepted:
            view = rows[acc.session_id][1]
            assert view["status"] == "completed" and view["correlationId"] == acc.correlation_id
            assert view["results"], view
        assert not sids & {v["sessionId"] for v in a.store.live_sessions()}
        # Any daemon answers from the shared rows: A's and C's views are B's.
        for acc in accepted[:5]:
            assert a.store.view(acc.session_id) == c.store.view(acc.session_id) == rows[acc.session_id][1]


async def test_waits_and_streams_follow_a_session_another_daemon_runs(
    nats_cluster: NatsCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """Daemon A accepts but runs nothing; B runs. A synchronous trigger on A answers with B's result, a session
    stream on A carries every event B writes to the end, and `wait_terminal` on A ends with B's terminal view."""
    async with running(tmp_path / "a", [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn,
                       max_concurrent_sessions=0) as a, \
            running(tmp_path / "b", [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn) as b:
        transport = httpx.ASGITransport(app=create_app(a))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080", timeout=60) as client:
            r = await asyncio.wait_for(client.post("/api/workspaces/cluster/signals/echo",
                                                   json={"payload": {"n": 7}}), 60)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["status"] == "completed", answer
            view = b.store.view(answer["sessionId"])
            assert view is not None and view["status"] == "completed"

            acc = await a.accept.accept(TriggerRequest("cluster", "slow", {"n": 1}, "http"))
            stream = asyncio.ensure_future(client.get(f"/api/sessions/{acc.session_id}/stream"))
            final = await a.store.wait_terminal(acc.session_id, 60)
            assert final["status"] == "completed" and final["lastSeq"] >= 4
            r = await asyncio.wait_for(stream, 60)
            assert r.status_code == 200
            seqs = [loads(line[6:])["seq"] for line in r.text.splitlines()
                    if line.startswith("data: ") and b'"seq"' in line.encode()]
            assert seqs == list(range(1, final["lastSeq"] + 1)), r.text
            assert "event: end" in r.text


# ------------------------------------------------------------------ faults


def health(d: ClusterDaemon) -> tuple[str, dict[str, Any]]:
    body = http.get(f"{d.url}/health", timeout=5).json()
    return body["status"], body["readModel"]


def _why_not_completed(ds: list[ClusterDaemon], rows: dict[str, str], accepted: list[str]) -> str:
    """What a failure of the outage test needs to be understood: each missing session's row and view, and the
    daemons' warnings and errors."""
    missing = [sid for sid in accepted if rows.get(sid) != "completed"]
    lines = [f"{len(missing)} of {len(accepted)} accepted sessions have no completed row"]
    for sid in missing[:5]:
        view = http.get(f"{ds[0].url}/api/sessions/{sid}", timeout=10)
        shown = ({k: view.json().get(k) for k in ("status", "errorCode", "error", "stepCount")}
                 if view.status_code == 200 else view.text[:200])
        lines.append(f"  {sid}: row {rows.get(sid)!r}; view {shown}")
    for d in ds:
        log_lines = d.log_path.read_text(errors="replace").splitlines()
        noted = [line for line in log_lines if " WARNING " in line or " ERROR " in line]
        lines.append(f"  {d.name}: {len(noted)} warnings/errors, the last ones:")
        lines += [f"    {line[:300]}" for line in noted[-15:]]
    return "\n".join(lines)


def test_postgresql_stopped_under_load_loses_no_accepted_trigger(daemons: DaemonFactory) -> None:
    """Issue #15 item 5, next to the nats-node kill: two daemons take triggers while the shared PostgreSQL stops for
    a while. New triggers are refused with 503 (JSON) while it cannot be written; every accepted one ends in exactly
    one completed row once it is back (its rows waited in its writer's memory); the daemons keep working, and
    their heartbeats stay fresh, so neither interrupts the other's sessions."""
    with pg_server() as pg:
        dsn = pg.create_database()
        ds = daemons(2, env={"ATLAS_DATABASE_URL": dsn})
        accepted: list[str] = []
        refused: list[dict[str, Any]] = []
        stop = threading.Event()

        def load(d: ClusterDaemon) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = http.post(f"{d.url}/api/workspaces/cluster/signals/echo?nowait=true",
                                  json={"payload": {"n": n}}, timeout=30)
                except httpx.HTTPError:
                    continue
                if r.status_code == 202:
                    accepted.append(r.json()["sessionId"])
                else:
                    refused.append({"status": r.status_code, **r.json()})

        threads = [threading.Thread(target=load, args=(d,)) for d in ds]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(accepted) >= 20, 60, what="load before the outage")
            pg.stop()
            wait_for(lambda: len(refused) >= 4, 60, what="triggers refused while PostgreSQL is down")
            for d in ds:
                wait_for(lambda d=d: health(d) == ("degraded", {"kind": "postgresql", "available": False}), 10,
                         what=f"{d.name}'s /health to report the read model unavailable")
            during = len(accepted)
            pg.start()
            wait_for(lambda: len(accepted) >= during + 20, 60, what="triggers accepted again")
            for d in ds:
                wait_for(lambda d=d: health(d) == ("ok", {"kind": "postgresql", "available": True}), 10,
                         what=f"{d.name}'s /health to be ok again")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
            if not pg.running:
                pg.start()
        assert {r["status"] for r in refused} == {503}, refused[:3]
        assert {r["error"]["code"] for r in refused} == {"read_model_unavailable"}
        assert len(set(accepted)) == len(accepted)

        def rows() -> dict[str, str]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return dict(conn.execute("SELECT session_id, status FROM sessions").fetchall())

        try:
            wait_for(lambda: all(rows().get(sid) == "completed" for sid in accepted), 120,
                     what="a completed row for every accepted trigger")
        except AssertionError:
            raise AssertionError(_why_not_completed(ds, rows(), accepted)) from None
        assert set(rows()) == set(accepted)  # exactly the accepted sessions: none refused got a row
