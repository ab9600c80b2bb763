"""kill -9 and SIGTERM of a real daemon: nothing accepted is lost (spec §4.4, §8.1, §8.2, §8.4; §13 items 36–37)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

ENV = {"ATLAS_MAX_CONCURRENT_SESSIONS": "1", "ATLAS_ACK_WAIT": "2s", "ATLAS_SHUTDOWN_GRACE": "1s"}


def trigger(d: DaemonProcess, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{d.url}/api/workspaces/core/signals/{sig}?nowait=true", json={"payload": payload}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def view(d: DaemonProcess, sid: str) -> dict[str, Any]:
    return httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()


def by_correlation(d: DaemonProcess, cid: str) -> list[dict[str, Any]]:
    return httpx.get(f"{d.url}/api/sessions", params={"correlationId": cid}, timeout=5).json()["sessions"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_kill9_interrupts_active_and_runs_accepted(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    try:
        running = trigger(d, "slow", {"duration": "60s"})
        wait_for(lambda: view(d, running["sessionId"])["status"] == "active", what="the slow session to start")
        # The only slot is busy: these are accepted (202) but cannot start before the crash.
        waiting = [trigger(d, "echo", {"n": i}) for i in range(3)]
        assert all(view(d, w["sessionId"])["status"] == "queued" for w in waiting)
        nats_pid = d.nats_pid()
        assert nats_pid is not None and pid_alive(nats_pid)

        d.kill9()
        # The embedded nats-server must not outlive its daemon (parent-death signal).
        wait_for(lambda: not pid_alive(nats_pid), 10, what="nats-server to die with its daemon")

        d.start()
        # At once by the first recovery pass; at worst (the marker write was lost with the process) by a later
        # pass once the start is older than 2 x ack_wait.
        interrupted = wait_for(
            lambda: (v := view(d, running["sessionId"]))["status"] == "interrupted" and v, 40, what="interrupted"
        )
        assert interrupted["errorCode"] == "interrupted"
        assert interrupted["correlationId"] == running["correlationId"]
        assert interrupted["rootSessionId"] == running["sessionId"] and interrupted["depth"] == 0
        assert interrupted["agentBlocks"][0]["status"] == "failed"
        listed = by_correlation(d, running["correlationId"])
        assert [(s["sessionId"], s["status"]) for s in listed] == [(running["sessionId"], "interrupted")]
        assert listed[0]["stepCount"] == 1  # the step that ran counts (spec §3.4)

        for w in waiting:
            done = wait_for(lambda w=w: (v := view(d, w["sessionId"]))["status"] == "completed" and v,
                            30, what=f"accepted session {w['sessionId']} to run after the restart")
            assert done["correlationId"] == w["correlationId"]
            assert [s["sessionId"] for s in by_correlation(d, w["correlationId"])] == [w["sessionId"]]
    finally:
        d.stop()


def test_sigterm_drains_and_leaves_nothing_active(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    running = trigger(d, "slow", {"duration": "60s"})
    wait_for(lambda: view(d, running["sessionId"])["status"] == "active", what="the slow session to start")
    queued = trigger(d, "echo", {"n": 1})
    nats_pid = d.nats_pid()
    assert d.stop() == 0
    assert nats_pid is not None and not pid_alive(nats_pid)

    d.start()
    try:
        stopped = view(d, running["sessionId"])
        assert stopped["status"] == "interrupted" and stopped["errorCode"] == "daemon_shutdown"
        wait_for(lambda: view(d, queued["sessionId"])["status"] == "completed", 30, what="queued session to run")
        active = httpx.get(f"{d.url}/api/sessions", params={"status": "active,queued"}).json()["sessions"]
        assert active == []
    finally:
        d.stop()


def test_leftover_nats_server_is_stopped_before_restart(tmp_path: Path) -> None:
    """A nats-server left on the store by a daemon that is gone is replaced. Simulated: SIGSTOP the broker, so the
    parent-death signal cannot end it, then kill -9 its daemon. (A daemon that is merely frozen still holds the
    home's lock, and its broker is not a leftover: see tests/test_home_lock.py.)"""
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    first = trigger(d, "echo", {"n": 1})
    wait_for(lambda: view(d, first["sessionId"])["status"] == "completed", what="first session")
    old_nats = d.nats_pid()
    assert old_nats is not None
    os.kill(old_nats, signal.SIGSTOP)
    try:
        d.kill9()
        assert pid_alive(old_nats)
        d.start()
        assert not pid_alive(old_nats)
        assert d.nats_pid() != old_nats
        # The data survived the takeover.
        assert view(d, first["sessionId"])["status"] == "completed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_nats, signal.SIGKILL)
        d.stop()


def test_deleted_sqlite_is_rebuilt_from_the_bus(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    done = [trigger(d, "echo", {"n": i}) for i in range(5)]
    for t in done:
        wait_for(lambda t=t: view(d, t["sessionId"])["status"] == "completed", what="session to complete")
    before = {t["sessionId"]: by_correlation(d, t["correlationId"]) for t in done}
    assert d.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "home" / f"atlas.db{suffix}").unlink(missing_ok=True)
    d.start()
    try:
        for t in done:
            rebuilt = wait_for(lambda t=t: by_correlation(d, t["correlationId"]), what="the summary to be rebuilt")
            assert rebuilt == before[t["sessionId"]]
            assert view(d, t["sessionId"])["results"] == {"atlas/echo": {"n": done.index(t)}}
    finally:
        d.stop()
