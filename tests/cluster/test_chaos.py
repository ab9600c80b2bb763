"""Chaos on a 3-node cluster with several daemons, under a steady load of nowait triggers (issue 7 part 3).

Every test asserts the invariant of spec §4.4 with `check_exactly_once`: each accepted trigger ends in exactly
one terminal session record — none duplicated, none lost — the same on every daemon and on the bus. The short
variants run in `make test`; the `cluster_long` ones (more daemons, more load, more faults) in
`make test-cluster`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import DaemonFactory
from tests.cluster.harness import (
    BusProbe,
    ClusterDaemon,
    NatsCluster,
    TriggerLoad,
    check_exactly_once,
    http,
    settle,
)
from tests.daemon_proc import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("chaos") / "nats").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(shared_nats: NatsCluster) -> NatsCluster:
    """One cluster for the whole module (overrides conftest's per-test one; each test has its own workspace and
    daemons, so tests never see each other's sessions). A node a failed test left dead is started again first."""
    for i, node in enumerate(shared_nats.nodes):
        if not node.running:
            shared_nats.restart(i)
    return shared_nats



@dataclass(frozen=True)
class Size:
    daemons: int
    before: int  # accepted triggers before the fault
    after: int  # accepted triggers after it


SHORT = Size(daemons=2, before=30, after=30)
LONG = Size(daemons=3, before=200, after=200)
SIZES = [pytest.param(SHORT, id="short"), pytest.param(LONG, id="long", marks=pytest.mark.cluster_long)]


def process_state(d: ClusterDaemon) -> str:
    assert d.proc is not None
    return Path(f"/proc/{d.proc.pid}/stat").read_text().rpartition(")")[2].split()[0]


def freeze(d: ClusterDaemon) -> None:
    """SIGSTOP, and wait until the kernel reports the process stopped (it then writes nothing more)."""
    d.sigstop()
    wait_for(lambda: process_state(d) == "T", 5, 0.01, f"{d.name} to be stopped")


@dataclass
class Snapshot:
    """Who was doing what when a daemon was frozen, from the session logs (`session:start` names the runner)."""

    active_on_victim: set[str]
    active_elsewhere: set[str]
    queued: set[str]

    @classmethod
    def take(cls, probe: BusProbe, victim: ClusterDaemon) -> Snapshot:
        snap = cls(set(), set(), set())
        for sid, (state, runner) in probe.runs().items():
            if state == "active":
                (snap.active_on_victim if runner == victim.daemon_id else snap.active_elsewhere).add(sid)
            elif state == "queued":
                snap.queued.add(sid)
        return snap

    def may_be_interrupted(self, sid: str) -> bool:
        return sid in self.active_on_victim


def wait_running_on(probe: BusProbe, d: ClusterDaemon, timeout: float = 20) -> None:
    wait_for(lambda: any(state == "active" and runner == d.daemon_id for state, runner in probe.runs().values()),
             timeout, 0.05, f"{d.name} to run a session")


def freeze_while_running(probe: BusProbe, victim: ClusterDaemon, attempts: int = 10) -> Snapshot:
    """Freeze the victim at a moment it runs sessions (thawing and retrying if its last one just ended), and
    return the snapshot taken while it is frozen."""
    for _ in range(attempts):
        wait_running_on(probe, victim)
        freeze(victim)
        snap = Snapshot.take(probe, victim)
        if snap.active_on_victim:
            return snap
        victim.sigcont()
    raise AssertionError(f"{victim.name} never ran a session at the moment it was frozen")


class Clock:
    """Phase timings, printed with the report (`pytest -s` shows them)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.phases: list[str] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append(f"{name} {now - self.last:.1f}s")
        self.last = now

    def __str__(self) -> str:
        return ", ".join(self.phases) + f" (total {time.monotonic() - self.t0:.1f}s)"


def report(name: str, load: TriggerLoad, counts: Any, clock: Clock, extra: str = "") -> None:
    print(f"\n[{name}] {load.summary()}; statuses of accepted sessions {dict(counts)} {extra}\n  phases: {clock}")


# ------------------------------------------------------------------------------------------------ kill -9 daemon

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("comeback", [pytest.param(False, id="survivors"),
                                      pytest.param(True, id="restart", marks=pytest.mark.cluster_long)])
@pytest.mark.parametrize("read_model", ["sqlite", "postgres"])
def test_kill9_daemon_under_load(daemons: DaemonFactory, probe: BusProbe, workspace: Path, size: Size,
                                 comeback: bool, read_model: str, request: pytest.FixtureRequest) -> None:
    """kill -9 of a daemon while sessions run: its active sessions end `interrupted` — by a survivor once the dead
    one's heartbeat expires, or by the dead one itself when it restarts at once — and its queued ones run.

    On a shared PostgreSQL read model (issue #15) the dead daemon was the only writer of its sessions' rows, and
    may have died before writing the last of them: recovery folds those sessions from the log, so their rows end
    exactly like the log."""
    clock = Clock()
    env = {"ATLAS_DATABASE_URL": request.getfixturevalue("pg_dsn")} if read_model == "postgres" else None
    ds = daemons(size.daemons, [workspace], env=env)
    victim, survivors = ds[0], ds[1:]
    load = TriggerLoad(list(ds), workspace=workspace.name).start()
    clock.mark("start")
    try:
        load.wait_accepted(size.before)
        snap = freeze_while_running(probe, victim)
        victim.kill9()
        t_kill = time.monotonic()
        clock.mark("load, kill")
        if comeback:
            victim.start()  # same ATLAS_HOME, same daemonId: it interrupts its own sessions at start (spec §8.1)
        else:
            load.remove_target(victim)
        load.wait_accepted(len(load.accepted) + size.after, timeout=60)
        clock.mark("load")
    finally:
        load.stop()
    # The victim's active sessions end interrupted without waiting for the rest of the load to settle.
    judge = survivors[0]
    wait_for(lambda: all(http.get(f"{judge.url}/api/sessions/{sid}").json()["status"] in ("interrupted", "completed")
                         for sid in snap.active_on_victim), 40, 0.1, "the victim's active sessions to end")
    took = time.monotonic() - t_kill
    clock.mark("interrupted")
    if not comeback:
        # A survivor acts once the heartbeat expires (ATLAS_HEARTBEAT_TTL 3 s), at its next recovery pass (10 s).
        assert took < 20, f"the dead daemon's sessions took {took:.1f} s to end"
    watchers = [*survivors, victim] if comeback else survivors
    outcomes = settle(watchers, load, timeout=90)
    clock.mark("settle")

    def allowed(sid: str, status: str) -> bool:
        return status == "completed" or (status == "interrupted" and snap.may_be_interrupted(sid))

    counts = check_exactly_once(outcomes, load, probe, allowed)
    views = outcomes[0].sessions
    interrupted = [sid for sid in snap.active_on_victim if views[sid]["status"] == "interrupted"]
    assert interrupted, "no session of the killed daemon ended interrupted"
    for sid in interrupted:
        assert views[sid]["errorCode"] == "interrupted"
    # Sessions that were only queued at the kill (accepted by anyone, maybe fetched by the victim) ran elsewhere.
    assert all(views[sid]["status"] == "completed" for sid in snap.queued if sid in views)
    clock.mark("checks")
    report("kill9 daemon", load, counts, clock, f"(victim's active sessions ended {took:.1f} s after the kill)")


# ------------------------------------------------------------------------------------------------ SIGTERM daemon

@pytest.mark.parametrize("size", SIZES)
def test_sigterm_daemon_drains(daemons: DaemonFactory, probe: BusProbe, workspace: Path, size: Size) -> None:
    """SIGTERM of one daemon under load: it drains (exit 0, heartbeat removed), leaves nothing active, its
    unstarted envelopes run elsewhere; the long variant restarts it and its read model catches up."""
    clock = Clock()
    ds = daemons(size.daemons, [workspace])
    victim, survivors = ds[0], ds[1:]
    load = TriggerLoad(list(ds), workspace=workspace.name).start()
    clock.mark("start")
    try:
        load.wait_accepted(size.before)
        wait_running_on(probe, victim)
        clock.mark("load")
        code = victim.stop()
        assert code == 0, victim.log()
        assert victim.daemon_id not in probe.live_daemons()
        clock.mark("drain")
        load.remove_target(victim)
        load.wait_accepted(len(load.accepted) + size.after, timeout=60)
        if size is LONG:
            victim.start()
            survivors = [*survivors, victim]
        clock.mark("load")
    finally:
        load.stop()
    outcomes = settle(survivors, load, timeout=60)
    clock.mark("settle")

    shut: list[str] = []

    def allowed(sid: str, status: str) -> bool:
        if status == "interrupted" and outcomes[0].sessions[sid].get("errorCode") == "daemon_shutdown":
            shut.append(sid)  # ran longer than ATLAS_SHUTDOWN_GRACE on the stopping daemon (spec §8.4)
            return True
        return status == "completed"

    counts = check_exactly_once(outcomes, load, probe, allowed)
    for d in survivors:
        live = http.get(f"{d.url}/api/sessions", params={"status": "queued,active"}).json()["sessions"]
        assert live == [], f"{d.name}: {live}"
    clock.mark("checks")
    report("sigterm daemon", load, counts, clock, f"(daemon_shutdown: {len(set(shut))})")


# ------------------------------------------------------------------------------------------------ SIGSTOP

@pytest.mark.parametrize("size", [pytest.param(SHORT, id="short", marks=pytest.mark.cluster_long),
                                  pytest.param(LONG, id="long", marks=pytest.mark.cluster_long)])
def test_frozen_daemon_forced_redelivery(daemons: DaemonFactory, probe: BusProbe, workspace: Path,
                                         size: Size) -> None:
    """Duplicate delivery, forced: a daemon is frozen (SIGSTOP) with envelopes delivered to it but not acked, so
    JetStream redelivers them to the others after ack_wait; its heartbeat expires and a survivor interrupts its
    active sessions. Then it thaws and carries on with the stale copies it still holds — no session may start
    twice or end twice.

    Both sizes run only in `make test-cluster` (≈ 20 s even when short: heartbeat expiry plus a recovery pass);
    `make test` covers duplicate delivery with `test_duplicate_envelopes_run_once` and the bug found here with
    `test_second_writer_of_the_same_seq_loses`."""
    clock = Clock()
    ds = daemons(size.daemons, [workspace])
    victim, others = ds[0], ds[1:]
    load = TriggerLoad(list(ds), workspace=workspace.name).start()
    clock.mark("start")
    try:
        load.wait_accepted(size.before)
        acks = probe.watch_acks()
        snap = freeze_while_running(probe, victim)
        load.remove_target(victim)
        clock.mark("load, freeze")
        wait_for(lambda: any(n > 1 for n, _, _ in acks), 30, 0.1, "a redelivery to another daemon to be acked")
        clock.mark("redelivery")
        wait_for(lambda: victim.daemon_id not in probe.live_daemons(), 30, 0.2, "the frozen heartbeat to expire")
        judge = others[0]
        wait_for(lambda: all(
            http.get(f"{judge.url}/api/sessions/{sid}").json()["status"] in ("interrupted", "completed")
            for sid in snap.active_on_victim), 40, 0.2, "a survivor to settle the frozen daemon's sessions")
        clock.mark("interrupted by a survivor")
        victim.sigcont()
        load.add_target(victim)
        load.wait_accepted(len(load.accepted) + size.after, timeout=60)
        clock.mark("thaw, load")
    finally:
        victim.sigcont()
        load.stop()
    outcomes = settle(ds, load, timeout=60)
    clock.mark("settle")

    def allowed(sid: str, status: str) -> bool:
        return status == "completed" or (status == "interrupted" and snap.may_be_interrupted(sid))

    counts = check_exactly_once(outcomes, load, probe, allowed)
    starts = probe.event_counts({sid for o in outcomes for sid in o.sessions}).get("session:start", Counter())
    assert all(n == 1 for n in starts.values()), {k: n for k, n in starts.items() if n != 1}
    redelivered = {seq for n, seq, _ in acks if n > 1}
    clock.mark("checks")
    report("frozen daemon", load, counts, clock, f"(envelopes redelivered: {len(redelivered)})")


# kill -9 of a nats node: tests/cluster/test_nats_node_loss.py (a cluster of its own, see there).
