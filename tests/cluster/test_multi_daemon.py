"""Several daemons on one 3-node JetStream cluster share the work and answer alike (issue 7 part 1; spec §4.3,
§6.7; §13 items 35 and 45)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atlas.bus.records import envelope_from_queued
from tests.cluster.conftest import stop_all
from tests.cluster.harness import BusProbe, ClusterDaemon, NatsCluster, http, list_all, sse_frames
from tests.daemon_proc import FIXTURES, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[ClusterDaemon], BusProbe]]:
    """One cluster and three daemons shared by this module's tests (they only look at their own sessions)."""
    root = tmp_path_factory.mktemp("cluster")
    cluster = NatsCluster(root / "nats").start()
    ds = [ClusterDaemon(root / f"d{i + 1}", [FIXTURES / "cluster"], cluster) for i in range(3)]
    try:
        for d in ds:
            d.spawn()
        for d in ds:
            d.wait_started()
        with BusProbe(cluster) as probe:
            yield ds, probe
        codes = stop_all(ds)
        assert codes == [0, 0, 0], [d.log() for d in ds]
    finally:
        stop_all(ds)
        cluster.stop()


def trigger(d: ClusterDaemon, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"{d.url}/api/workspaces/cluster/signals/{sig}?nowait=true", json={"payload": payload}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def by_correlation(d: ClusterDaemon, cid: str) -> list[dict[str, Any]]:
    r = http.get(f"{d.url}/api/sessions", params={"correlationId": cid}, timeout=5)
    assert r.status_code == 200, r.text
    return list(r.json()["sessions"])


def test_any_daemon_accepts_and_every_daemon_answers(trio: tuple[list[ClusterDaemon], BusProbe]) -> None:
    ds, _ = trio
    # Every daemon registered its heartbeat in DAEMONS and sees the others (polled: the daemon's listing of DAEMONS
    # sometimes comes back empty on a cluster, see test_bus_cluster.py::test_kv_keys_lists_every_live_daemon).
    ids = {d.daemon_id for d in ds}
    for d in ds:
        wait_for(lambda d=d: {c["daemonId"] for c in http.get(f"{d.url}/api/daemon/status").json()["cluster"]} == ids,
                 5, 0.05, f"{d.name} to list every daemon")

    accepted = []
    worst_lag = 0.0
    for i in range(24):
        a = ds[i % 3]
        body = trigger(a, "echo", {"n": i})
        sid, cid = body["sessionId"], body["correlationId"]
        # The accepting daemon: at once, with no retry (spec §4.3).
        mine = by_correlation(a, cid)
        assert [s["sessionId"] for s in mine] == [sid]
        for b in ds:
            if b is a:
                continue
            # Another daemon: GET /api/sessions/<sid> works at once (it replays the subject if need be) …
            r = http.get(f"{b.url}/api/sessions/{sid}", timeout=5)
            assert r.status_code == 200, r.text
            assert r.json()["correlationId"] == cid
            # … and its list shows the session within 1 s (materialised from the bus).
            t0 = time.monotonic()
            wait_for(lambda b=b, cid=cid, sid=sid: [s["sessionId"] for s in by_correlation(b, cid)] == [sid],
                     1.0, 0.01, f"{b.name} to list {sid} by correlationId within 1 s")
            worst_lag = max(worst_lag, time.monotonic() - t0)
        accepted.append(body)
    assert worst_lag < 1.0

    sids = {a["sessionId"] for a in accepted}

    def all_completed() -> bool:
        for d in ds:
            listed = {s["sessionId"]: s["status"] for s in list_all(d.url, {"workspaceId": "cluster"})}
            if any(listed.get(sid) != "completed" for sid in sids):
                return False
        return True

    wait_for(all_completed, 30, 0.1, "every session completed on every daemon")
    summaries = [{s["sessionId"]: s for s in list_all(d.url, {"workspaceId": "cluster"}) if s["sessionId"] in sids}
                 for d in ds]
    assert summaries[0].keys() == summaries[1].keys() == summaries[2].keys() == sids
    for body in accepted:
        for d in ds:
            assert [s["sessionId"] for s in by_correlation(d, body["correlationId"])] == [body["sessionId"]]
    # The summaries agree field by field on every daemon (same events, same reducer).
    for sid in sids:
        keys = ("status", "correlationId", "rootSessionId", "depth", "jobName", "stepCount", "startedAt")
        assert len({json.dumps([s[sid].get(k) for k in keys]) for s in summaries}) == 1

    # The session streams replay the same durable events on every daemon.
    probe_sid = accepted[0]["sessionId"]
    streams = [sse_frames(f"{d.url}/api/sessions/{probe_sid}/stream") for d in ds]
    assert streams[0] and streams[0][-1]["event"] == "end"
    assert streams[0] == streams[1] == streams[2]
    tree = [sse_frames(f"{d.url}/api/sessions/stream", {"correlationId": accepted[1]["correlationId"]}) for d in ds]
    assert tree[0] and tree[0] == tree[1] == tree[2]


def test_work_is_shared_and_runs_once(trio: tuple[list[ClusterDaemon], BusProbe]) -> None:
    """Sessions accepted through one daemon run on all of them, each exactly once."""
    ds, probe = trio
    ids = {d.daemon_id: d.name for d in ds}
    bodies = [trigger(ds[0], "slow", {"duration": "1500ms"}) for _ in range(36)]
    sids = {b["sessionId"] for b in bodies}
    runners: set[str] = set()

    def all_ran_somewhere() -> bool:
        runners.update(runner for sid, (_, runner) in probe.runs().items() if sid in sids and runner)
        return runners >= ids.keys()

    wait_for(all_ran_somewhere, 20, 0.1, "every daemon to run one of the sessions")
    wait_for(lambda: all(s["status"] == "completed" for s in list_all(ds[2].url) if s["sessionId"] in sids)
             and sids <= {s["sessionId"] for s in list_all(ds[2].url)}, 30, 0.1, "all completed")
    counts = probe.event_counts(sids)
    for kind in ("session:queued", "session:start", "session:complete"):
        assert all(counts[kind][sid] == 1 for sid in sids), (kind, counts.get(kind))


def test_duplicate_envelopes_run_once(trio: tuple[list[ClusterDaemon], BusProbe], tmp_path: Path) -> None:
    """Forced redelivery at the bus level (spec §13 item 35, on a cluster): an accepted session's envelope is
    published again — with the same Nats-Msg-Id (the broker drops it) and with fresh ids that get past the broker's
    dedupe, so several daemons receive copies at once — while the session is queued, while it runs and after it
    ended. It must run once: one record, one log, and its job's side effect (a line appended to a file) once."""
    ds, probe = trio
    files = [tmp_path / f"effect-{i}.txt" for i in range(12)]
    bodies = [trigger(ds[i % 3], "effect", {"file": str(f)}) for i, f in enumerate(files)]
    # The envelopes, rebuilt from `session:queued` the way recovery rebuilds one (same ids, payload and lineage).
    envelopes = [envelope_from_queued(probe.events(b["sessionId"])[0]) for b in bodies]

    def copy(env: dict[str, Any]) -> None:
        data = json.dumps(env).encode()
        subject = f"workspaces.cluster.signals.{env['signalId']}"
        probe.publish(subject, data, {"Nats-Msg-Id": env["sessionId"]})  # within the dedupe window: dropped
        for k in range(2):
            probe.publish(subject, data, {"Nats-Msg-Id": f"{env['sessionId']}-copy{k}"})

    def status(sid: str) -> str:
        return str(http.get(f"{ds[0].url}/api/sessions/{sid}").json()["status"])

    for env in envelopes[0:4]:  # at once: queued, or just started
        copy(env)
    wait_for(lambda: all(status(e["sessionId"]) == "active" for e in envelopes[4:8]), 20, 0.05, "active")
    for env in envelopes[4:8]:  # while it runs
        copy(env)
    wait_for(lambda: all(status(e["sessionId"]) == "completed" for e in envelopes[8:]), 20, 0.05, "completed")
    for env in envelopes[8:]:  # after it ended
        copy(env)

    sids = {b["sessionId"] for b in bodies}
    for d in ds:
        wait_for(lambda d=d: (lambda listed: sids <= listed.keys() and all(listed[s] == "completed" for s in sids))(
            {s["sessionId"]: s["status"] for s in list_all(d.url)}), 30, 0.1, f"{d.name}: every session completed")
    for b in bodies:
        for d in ds:
            assert [s["sessionId"] for s in by_correlation(d, b["correlationId"])] == [b["sessionId"]]
    counts = probe.event_counts(sids)
    for kind in ("session:queued", "session:start", "session:complete"):
        assert all(counts[kind][sid] == 1 for sid in sids), (kind, counts.get(kind))

    # Every copy consumed and nothing running any more (three quiet polls in a row), or a job ran twice already.
    def lines(f: Path) -> int:
        return len(f.read_text().splitlines()) if f.exists() else 0

    quiet = [0]

    def settled() -> bool:
        if any(lines(f) > 1 for f in files):
            return True
        idle = probe.consumer_idle() and not any(http.get(f"{d.url}/health").json()["activeSessions"] for d in ds)
        quiet[0] = quiet[0] + 1 if idle else 0
        return quiet[0] >= 3

    wait_for(settled, 30, 0.2, "every copy to be consumed")
    ran = {b["sessionId"]: lines(f) for b, f in zip(bodies, files, strict=True)}
    # (Before 08c7599 a copy of a started session's envelope ran its job again, with nothing in the log: see
    # test_bus_cluster.py::test_second_writer_of_the_same_seq_loses.)
    assert all(n == 1 for n in ran.values()), f"a session ran its job more than once: {ran}"
    wait_for(lambda: not probe.inflight().keys() & sids, 20, 0.2, "markers removed")
