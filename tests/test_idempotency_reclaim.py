"""Bug 12 of issue #19: an Idempotency-Key left `pending` by a crash must not answer 409 for 24 h (spec §4.5, §8.1).

A pending entry is made the way a crash makes one: a real daemon process (its own event loop, bus connection and
heartbeat) reserves the key through the daemon's own `Idempotency.reserve`, the step a trigger takes before it
accepts, and is then killed with SIGKILL before it could accept or release. Then:

* the same daemon (same home, so same daemon id) is started again: it takes the key at once (202, a new session),
  because the entry was made by an earlier process of itself;
* on a shared bus, another daemon takes the key at once when the owner was restarted in between (its heartbeat is
  back, but from a process that never saw the request), or when the owner's heartbeat expired.

Real nats-server, real daemons in child processes, real HTTP; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from atlas.bus.client import KV_DAEMONS
from tests.daemon_proc import FIXTURES, ROOT, DaemonProcess, wait_for

NATS_SERVER = str(Path(sys.executable).parent / "nats-server")
BODY = b'{"payload":{"n":7}}'
TRIGGER = "/api/workspaces/core/signals/echo"

# A real daemon that reserves one Idempotency-Key as a trigger would, says so, then waits to be killed.
RESERVER = """
import asyncio, sys
from pathlib import Path
import uvloop
from tests.inproc import running

async def main(home, workspace, nats_url, key, body, flag):
    async with running(Path(home), [Path(workspace)], nats_url or None) as daemon:
        reservation = await daemon.idempotency.reserve("core", "echo", key, body.encode())
        assert reservation.replay is None
        Path(flag).write_text(daemon.daemon_id)
        await asyncio.Event().wait()

uvloop.run(main(*sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A plain nats-server with JetStream that several daemons share (spec §6.7)."""
    port = _free_port()
    log = open(tmp_path / "nats.log", "wb")
    proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
                            stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        assert proc.poll() is None, (tmp_path / "nats.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, 0.05, "nats-server to listen")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _crash_while_pending(home: Path, key: str, nats_url: str = "", env: dict[str, str] | None = None) -> str:
    """Run a daemon on `home` that reserves `key` (pending), kill -9 it; returns its daemon id."""
    flag = home.parent / f"{home.name}.reserved"
    run_env = {**os.environ, "ATLAS_LOG_LEVEL": "warning", **(env or {})}
    run_env.pop("ATLAS_NATS_URL", None)
    with open(home.parent / f"{home.name}.reserver.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", RESERVER, str(home), str(FIXTURES / "core"), nats_url, key,
                                 BODY.decode(), str(flag)], cwd=ROOT, env=run_env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        def reserved() -> bool:
            assert proc.poll() is None, (home.parent / f"{home.name}.reserver.log").read_text()
            return flag.exists() and flag.stat().st_size > 0

        wait_for(reserved, 60, 0.05, "the reserving daemon")
        return flag.read_text()
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no release, no graceful stop
        proc.wait(timeout=10)


def _trigger(daemon: DaemonProcess, key: str) -> httpx.Response:
    return httpx.post(daemon.url + TRIGGER + "?nowait=true", content=BODY, timeout=30,
                      headers={"Idempotency-Key": key, "Content-Type": "application/json"})


def _assert_fresh_accept(daemon: DaemonProcess, key: str) -> None:
    """The key is taken as a new trigger (not 409 `idempotency_key_in_progress`, not a replay), and is then ours."""
    r = _trigger(daemon, key)
    assert r.status_code == 202, r.text
    assert "Idempotent-Replayed" not in r.headers
    again = _trigger(daemon, key)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["sessionId"] == r.json()["sessionId"]


async def _heartbeat(url: str, daemon_id: str) -> bytes | None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(KV_DAEMONS)
        try:
            return (await kv.get(daemon_id)).value
        except nats.js.errors.KeyNotFoundError:
            return None
    finally:
        await nc.close()


def test_restarted_daemon_takes_back_a_key_its_crashed_process_left_pending(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _crash_while_pending(home, "crash-same-id")
    daemon = DaemonProcess(home, [FIXTURES / "core"]).start()  # same home: same daemon id, a new process
    try:
        # Before the fix: the entry's owner is this very daemon id, so it waited 5 s and answered 409 (for 24 h).
        _assert_fresh_accept(daemon, "crash-same-id")
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_other_daemon_takes_a_key_whose_owner_restarted(tmp_path: Path, nats_url: str) -> None:
    owner_home = tmp_path / "a"
    _crash_while_pending(owner_home, "crash-restarted-owner", nats_url)
    env = {"ATLAS_NATS_URL": nats_url}
    owner = DaemonProcess(owner_home, [FIXTURES / "core"], env).start()  # its heartbeat is back
    other = DaemonProcess(tmp_path / "b", [FIXTURES / "core"], env).start()
    try:
        # Before the fix: the owner's daemon id had a live heartbeat, so this waited 5 s and answered 409.
        _assert_fresh_accept(other, "crash-restarted-owner")
    finally:
        assert other.stop() == 0, other.log()
        assert owner.stop() == 0, owner.log()


def test_other_daemon_takes_a_key_whose_owner_heartbeat_expired(tmp_path: Path, nats_url: str) -> None:
    env = {"ATLAS_HEARTBEAT_TTL": "2s"}  # the first daemon on the bus makes the DAEMONS bucket: a short TTL
    owner_id = _crash_while_pending(tmp_path / "a", "crash-gone-owner", nats_url, env)
    wait_for(lambda: asyncio.run(_heartbeat(nats_url, owner_id)) is None, 30, 0.2,
             "the crashed owner's heartbeat to expire")
    other = DaemonProcess(tmp_path / "b", [FIXTURES / "core"], {"ATLAS_NATS_URL": nats_url, **env}).start()
    try:
        _assert_fresh_accept(other, "crash-gone-owner")
    finally:
        assert other.stop() == 0, other.log()
