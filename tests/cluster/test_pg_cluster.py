"""Daemons on one JetStream cluster sharing a PostgreSQL read model (issue #15): a session accepted by one daemon is
listed by correlationId on another on the first try, because its queued row is committed before the 202.

Real parts: a 3-node nats-server cluster, two atlasd processes, a private PostgreSQL 15 server.
"""

from __future__ import annotations

import asyncio
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
from tests.cluster.harness import NatsCluster, http
from tests.daemon_proc import FIXTURES
from tests.inproc import running

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
            running(homes[1], [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn) as b, \
            running(homes[2], [FIXTURES / "cluster"], nats_cluster.urls, database_url=pg_dsn,
                    max_concurrent_sessions=0) as c:
        assert c.bus.nc is not None
        received_before = c.bus.nc.stats["in_msgs"]
        accepted = [await a.accept.accept(TriggerRequest("cluster", "echo", {"n": n}, "http")) for n in range(30)]
        sids = {acc.session_id for acc in accepted}
        await until_async(lambda: all(pg_rows(pg_dsn).get(sid, ("",))[0] == "completed" for sid in sids), 60,
                          "every session completed in the shared read model")
        received = c.bus.nc.stats["in_msgs"] - received_before
        events = sum(int(view["lastSeq"]) for status, view in pg_rows(pg_dsn).values())
        assert events > 100
        assert received < 30, f"the idle daemon received {received} messages while {events} events were written"
        rows = pg_rows(pg_dsn)
        for acc in accepted:
            status, view = rows[acc.session_id]
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
