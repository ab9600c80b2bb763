"""Reconnections to NATS in the metrics (issue #18): a daemon whose nats node is killed reconnects (to another node
of the cluster, or to the same one once it is back) and counts it in `atlas_bus_reconnects_total`, and goes on
accepting triggers."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import DaemonFactory
from tests.cluster.harness import ClusterDaemon, NatsCluster, http
from tests.daemon_proc import wait_for

pytestmark = pytest.mark.cluster


def reconnects(d: ClusterDaemon) -> float:
    r = http.get(f"{d.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return sum(s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if s.name == "atlas_bus_reconnects_total")


def test_a_lost_nats_connection_is_counted_once_reconnected(nats_cluster: NatsCluster,
                                                             daemons: DaemonFactory) -> None:
    # Only node 0's address: its loss is this daemon's loss of connection (the client then also knows the nodes
    # the cluster announced, and may reconnect to any of them).
    (d,) = daemons(1, env={"ATLAS_NATS_URL": nats_cluster.nodes[0].url})
    assert reconnects(d) == 0
    nats_cluster.kill9(0)
    try:
        wait_for(lambda: reconnects(d) == 1, 60, what="the reconnection counted")
    finally:
        nats_cluster.restart(0)
    r = http.post(f"{d.url}/api/workspaces/cluster/signals/echo", json={"payload": {"n": 1}}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
