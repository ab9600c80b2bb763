"""Losing one nats node of three under load (issue 19, bug 14): the daemons ride through the leader elections.

A 3-node R3 cluster keeps a quorum with one node down, but every stream and consumer the dead node led has no
leader until the others elect one (nats-server waits 4–9 s for a lost leader before it campaigns). Before the fix,
the daemons refused nearly every trigger for the whole election (503 `bus_unavailable`) and runs whose writes fell
into it ended `interrupted` although no daemon died. Each test kills several nodes in turn (the leader of a
different stream each time; leadership moves with every kill, so which node leads what varies) and asserts:

- no run ends `interrupted` (no daemon died), and every accepted trigger ends in exactly one terminal record;
- the longest stretch during which most triggers were refused stays within the issue's goal of 3 s (the measured
  value of every kill is printed, with the slowest answer: triggers wait out an election rather than fail);
- the cluster recovers after each kill (every replica current) and every daemon keeps accepting.

The cluster is this module's own, fresh per test (conftest's `nats_cluster`), not test_chaos.py's shared one: the
DAEMONS bucket takes its TTL from the first daemon that creates it, and these daemons run with a heartbeat TTL
above an election's length, as docs/deploy.md asks of a deployment (the other chaos tests' 3 s TTL is shorter
than any election, so there every heartbeat expires while DAEMONS elects, whatever the daemons do).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cluster.conftest import DaemonFactory
from tests.cluster.harness import BusProbe, NatsCluster, TriggerLoad, check_exactly_once, http, settle
from tests.cluster.test_chaos import LONG, SIZES, Clock, Size, report
from tests.daemon_proc import wait_for

pytestmark = pytest.mark.cluster

STREAMS = ["SIGNALS", "SESSION_EVENTS", "DEAD_LETTERS", "KV_SESSION_INFLIGHT", "KV_SESSION_METADATA", "KV_DAEMONS",
           "KV_CONCURRENCY"]
# Which stream's leader each kill takes down (whichever node leads it at that moment). The node comes back after
# DOWNTIME_S, as in the runs.
SHORT_KILLS = ["SIGNALS", "SESSION_EVENTS", "KV_DAEMONS"]
LONG_KILLS = ["SIGNALS", "SESSION_EVENTS", "KV_DAEMONS", "KV_SESSION_METADATA", "SIGNALS", "SESSION_EVENTS"]
DOWNTIME_S = 6.0
# The goal: at most 3 s during which most triggers are refused (a liveness bound; measured: 0 s, where it
# was 5–8 s per kill before the fix).
REFUSED_WINDOW_MAX_S = 3.0
# Well above an election (4–9 s) plus a heartbeat period; production's default is 30 s.
HEARTBEAT_TTL = "20s"


def stream_leader(probe: BusProbe, stream: str) -> str:
    async def op() -> str:
        info = await (await probe._js()).stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None
        return str(info.cluster.leader)

    return probe._run(op())


def leader_node(nats_cluster: NatsCluster, probe: BusProbe, stream: str) -> int:
    """Index of the node that leads `stream` now (asked until the cluster answers: a meta election may run)."""
    found: list[int] = []

    def ask() -> bool:
        try:
            leader = stream_leader(probe, stream)
        except Exception:
            return False
        found[:] = [i for i, n in enumerate(nats_cluster.nodes) if n.name == leader and n.running]
        return bool(found)

    wait_for(ask, 30, 0.2, f"a leader of {stream}")
    return found[0]


@pytest.mark.parametrize("size", SIZES)
def test_kill9_nats_node_under_load(nats_cluster: NatsCluster, daemons: DaemonFactory, probe: BusProbe,
                                    workspace: Path, size: Size) -> None:
    """kill -9 of one nats-server of three, several times (each time the leader of another stream, restarted 6 s
    later): no run ends `interrupted`, every accepted trigger ends in exactly one terminal record, the stretch
    during which most triggers are refused stays short, and the cluster recovers after each kill."""
    clock = Clock()
    ds = daemons(size.daemons, [workspace], env={"ATLAS_HEARTBEAT_TTL": HEARTBEAT_TTL})
    load = TriggerLoad(list(ds), workspace=workspace.name).start()
    clock.mark("start")
    victims = LONG_KILLS if size is LONG else SHORT_KILLS
    windows: list[str] = []
    refused_max = 0.0
    try:
        load.wait_accepted(size.before)
        clock.mark("load")
        for stream in victims:
            idx = leader_node(nats_cluster, probe, stream)
            leader = nats_cluster.nodes[idx].name
            t_kill = time.monotonic()
            nats_cluster.kill9(idx)
            time.sleep(DOWNTIME_S)  # the fault's length (the load runs meanwhile), not a synchronisation
            nats_cluster.restart(idx)
            nats_cluster.wait_streams_current(STREAMS)
            back = time.monotonic()
            clock.mark(f"{leader} ({stream} leader) down {DOWNTIME_S:g} s, back, replicas current")
            load.wait_accepted(len(load.accepted) + size.after // len(victims), timeout=60)
            window = load.refused_window(since=t_kill)
            refused_max = max(refused_max, window)
            windows.append(f"{leader}/{stream} {window:g} s")
            print(f"\n[kill9 nats node] kill of {windows[-1]} of refusals at most; {load.summary()}", flush=True)
            clock.mark("load")
    finally:
        load.stop()
    # The daemons reconnected: every one is healthy, has its heartbeat in DAEMONS, and accepted triggers after
    # the last node came back.
    wait_for(lambda: probe.live_daemons() >= {d.daemon_id for d in ds}, 30, 0.5, "every daemon's heartbeat")
    for d in ds:
        assert http.get(f"{d.url}/health").json()["status"] == "ok"
        assert any(a.daemon == d.name and a.at > back for a in load.accepted), f"{d.name} accepted nothing"
    outcomes = settle(ds, load, timeout=90, stall=20, accepted_only=True)
    # Triggers refused with 503 may have left a session record; like every record, it must end (before def6671 one
    # could stay `queued` forever: see test_bus_cluster.py::test_a_refused_trigger_leaves_no_session_behind).
    outcomes = settle(ds, load, timeout=30)
    clock.mark("settle")
    accepted = {a.session_id for a in load.accepted}
    interrupted = sorted(sid for sid, s in outcomes[0].sessions.items() if s["status"] == "interrupted")
    slowest = max((at - sent for sent, at, _ in load.answers), default=0.0)
    detail = (f"(records of 503'd triggers: {len(set(outcomes[0].sessions) - accepted)}; interrupted: "
              f"{len(interrupted)}; longest refused stretch per kill: {', '.join(windows)}; slowest answer "
              f"{slowest:.1f} s)")
    print(f"\n[kill9 nats node] {detail}", flush=True)

    def allowed(sid: str, status: str) -> bool:
        # No daemon died, so no run may end `interrupted`. A 503'd trigger whose envelope reached SIGNALS although
        # its acknowledgement did not reach the daemon is durable after all and runs like any other (the client was
        # told to retry; spec §6.4); one whose envelope did not land ends failed/bus_unavailable, which
        # `check_exactly_once` allows for records beyond the 202s.
        return status == "completed"

    # Once a bug (a runner that lost its session to another writer stored its stale `active` summary in
    # SESSION_METADATA); `_write_final` now brings a non-terminal local view up to date from the log first.
    counts = check_exactly_once(outcomes, load, probe, allowed)
    assert refused_max <= REFUSED_WINDOW_MAX_S, f"most triggers were refused for {refused_max:g} s {detail}"
    clock.mark("checks")
    report("kill9 nats node", load, counts, clock, detail)
