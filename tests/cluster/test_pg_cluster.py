"""Daemons on one JetStream cluster sharing a PostgreSQL read model (issue #15): a session accepted by one daemon is
listed by correlationId on another on the first try, because its queued row is committed before the 202.

Real parts: a 3-node nats-server cluster, two atlasd processes, a private PostgreSQL 15 server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

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

