"""Daemons on one JetStream cluster sharing a PostgreSQL read model (issue #15): a session accepted by one daemon is
listed by correlationId on another on the first try, because its queued row is committed before the 202.

Real parts: a 3-node nats-server cluster, two atlasd processes, a private PostgreSQL 15 server.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

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


def test_postgresql_stopped_under_load_loses_no_accepted_trigger(daemons: DaemonFactory, tmp_path: Path) -> None:
    """Issue #15 item 5, next to the nats-node kill: two daemons take triggers while the shared PostgreSQL stops for
    a while. New triggers are refused with 503 (JSON) while it cannot be written; every accepted one ends in exactly
    one completed row once it is back; the daemons keep working."""
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
            pg.start()
            before = len(accepted)
            wait_for(lambda: len(accepted) >= before + 20, 60, what="triggers accepted again")
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

        wait_for(lambda: all(rows().get(sid) == "completed" for sid in accepted), 120,
                 what="a completed row for every accepted trigger")
        assert set(rows()) == set(accepted)  # exactly the accepted sessions: none refused got a row
