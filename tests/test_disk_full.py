"""The bus after the disk filled: degraded while it cannot write, back by itself once space returns (issue #19, bug 9).

Reproduced for real: ATLAS_HOME lives on a small tmpfs that the test fills to the last byte. nats-server 2.15 answers
an ENOSPC on a stream's block file by keeping a "critical write error" on that stream's store: every later publish
to the stream goes unanswered, even after space was freed, until the server restarts (JetStream itself stays
enabled; the account and stream infos look healthy). Before the fix the daemon kept `/health` at `ok` and answered
every trigger 503 after its publish timed out, for as long as it ran.

The tmpfs needs `mount` (root, or a CI that allows it); where it is refused the test is skipped with that reason —
JetStream's own storage limits (`max_file_store`) answer "insufficient resources" without the sticky store error, so
they would not reproduce this bug.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from atlas.sessions.readmodel import ReadModel
from atlas.sessions.store import SessionStore
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

TMPFS_SIZE = "64m"
RECOVERY_S = 10.0  # the bound: triggers accepted again within 10 s of space returning


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of our own, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: cannot give the daemon a disk of its own to fill")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({done.stderr.strip()}): cannot fill a disk for real")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem refuses another byte; returns it (remove it to give the space back)."""
    filler = disk / "filler"
    chunk = 1 << 20
    with open(filler, "wb", buffering=0) as fh:
        while chunk >= 512:
            try:
                fh.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    return filler


def trigger(d: DaemonProcess, n: int) -> httpx.Response:
    return httpx.post(f"{d.url}/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": n}},
                      timeout=60)


def health(d: DaemonProcess) -> dict[str, Any]:
    return httpx.get(f"{d.url}/health", timeout=2).json()


def status_of(d: DaemonProcess, sid: str) -> str:
    return str(httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json().get("status"))


async def publish_to_signals(home: Path, size: int) -> str:
    """One JetStream publish of `size` bytes to SIGNALS on the daemon's own nats-server: what an accept writes
    first. Returns how it ended ("ack", or the error's type)."""
    nats_dir = home / "nats"
    token = (nats_dir / "token").read_text().strip()
    port = json.loads(next(nats_dir.glob("*.ports")).read_text())["nats"][0].rsplit(":", 1)[1]
    nc = await nats.connect(f"nats://127.0.0.1:{port}", token=token)
    try:
        js = nc.jetstream(timeout=3)
        # A signal no workspace has: should it land after all, the consumer drops it like any unknown signal.
        await js.publish("workspaces.core.signals.disk-full-probe", b"x" * size)
        return "ack"
    except Exception as exc:
        return type(exc).__name__
    finally:
        await nc.close()


def test_the_bus_recovers_by_itself_after_the_disk_filled(small_disk: Path) -> None:
    home = small_disk / "home"
    d = DaemonProcess(home, [FIXTURES / "core"]).start()
    try:
        before = []
        for n in range(20):
            r = trigger(d, n)
            assert r.status_code == 202, r.text
            before.append(r.json()["sessionId"])
        wait_for(lambda: all(status_of(d, sid) == "completed" for sid in before), 30, what="sessions to complete")
        assert health(d)["status"] == "ok"

        filler = fill(small_disk)
        # A write that needs a new page now fails inside nats-server, and that stream stays broken after it.
        assert asyncio.run(publish_to_signals(home, 64 * 1024)) != "ack"

        # /health tells (it said "ok" before the fix, while every trigger got 503), and triggers are refused.
        wait_for(lambda: health(d)["status"] == "degraded", 10, what="/health to report the bus degraded")
        assert health(d)["bus"] == "degraded"
        refused = trigger(d, 100)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "bus_unavailable"

        filler.unlink()
        freed = time.monotonic()
        accepted: list[str] = []

        def accepts() -> bool:
            r = trigger(d, 200 + len(accepted))
            if r.status_code == 202:
                accepted.append(r.json()["sessionId"])
                return True
            assert r.status_code == 503, r.text
            return False

        wait_for(accepts, RECOVERY_S, interval=0.25, what="a trigger accepted again after space returned")
        assert time.monotonic() - freed < RECOVERY_S + 1  # the last trigger's own answer was quick
        wait_for(lambda: status_of(d, accepted[0]) == "completed", 30, what="the new session to complete")
        wait_for(lambda: health(d)["status"] == "ok", 10, what="/health ok again")
        assert health(d)["bus"] == "ok"

        # Nothing accepted before the disk filled was lost, in the bus or in the read model.
        assert all(status_of(d, sid) == "completed" for sid in before)
        listed = httpx.get(f"{d.url}/api/sessions", params={"limit": "500"}, timeout=10).json()["sessions"]
        assert set(before) | set(accepted) <= {s["sessionId"] for s in listed}
    finally:
        code = d.stop()
        assert code == 0, d.log()
        assert os.path.ismount(small_disk)


def queued(sid: str, n: int) -> dict[str, Any]:
    return {"type": "session:queued", "sessionId": sid, "seq": 1, "timestamp": f"2026-11-25T10:00:{n % 60:02d}.000Z",
            "workspaceId": "w", "jobName": "j", "signalId": "s", "task": "j", "trigger": "http",
            "correlationId": f"c-{sid}", "rootSessionId": sid, "depth": 0, "plannedSteps": [],
            "payload": {"n": n, "text": "x" * 2000}}


async def poll(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_read_model_rows_that_met_a_full_disk_are_written_once_space_returns(small_disk: Path) -> None:
    """SQLite answers SQLITE_FULL; the batch used to be dropped (logged) and its sessions were missing from every
    list until a restart replayed them from the bus."""
    store = SessionStore(ReadModel(small_disk / "atlas.db"))
    try:
        filler = fill(small_disk)
        sids = [f"s{n:04d}" for n in range(2000)]  # ~4 MB of rows: the WAL must grow, and cannot
        for n, sid in enumerate(sids):
            store.apply(queued(sid, n), new=True)
        store.flush()
        await poll(lambda: not store._writing and store._idle.is_set(), 10, "the batch to be tried")
        assert store._rm.count_by_status().get("queued", 0) < len(sids), "the disk was not full after all"
        filler.unlink()
        await poll(lambda: not store._dirty and not store._writing and store._idle.is_set()
                   and store._rm.count_by_status().get("queued", 0) == len(sids), 10, "every row written")
    finally:
        store.close()


async def test_a_store_closed_on_a_full_disk_closes_without_an_error(small_disk: Path) -> None:
    """A daemon stopped while its disk is full exited 1 ("database or disk is full") from the read model's last
    write; the rows are the bus's to give back at the next start, so the stop is clean."""
    store = SessionStore(ReadModel(small_disk / "atlas.db"))
    fill(small_disk)
    for n in range(2000):
        store.apply(queued(f"s{n:04d}", n), new=True)
    store.close()  # raised sqlite3.OperationalError before
    assert not (small_disk / "atlas.db.closed").exists()  # not vouched for: the next start checks the whole file
