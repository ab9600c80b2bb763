"""Retention (spec §7.3): old terminal sessions leave the read model and JetStream; the daemon refuses a retention
that does not outlive the queue timeout plus the longest job timeout."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
import nats

from atlas.bus.client import SESSION_LOGS, logs_subject
from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess, wait_for
from tests.test_api_core import assert_error, wait_terminal


def test_too_short_retention_refuses_to_start(tmp_path: Path) -> None:
    env = {"ATLAS_SESSION_RETENTION": "1h", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [ATLAS, "daemon", "start", "--home", str(tmp_path / "h"), "--port", "0", "--workspace", str(FIXTURES / "core")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "ATLAS_SESSION_RETENTION" in proc.stderr and "ATLAS_QUEUE_TIMEOUT" in proc.stderr


def test_short_retention_prunes_terminal_sessions(tmp_path: Path) -> None:
    env = {"ATLAS_SESSION_RETENTION": "4s", "ATLAS_QUEUE_TIMEOUT": "1s"}
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "quick"], env).start()
    try:
        r = httpx.post(f"{d.url}/api/workspaces/quick/signals/echo", json={"payload": {"x": 1}}, timeout=30)
        assert r.status_code == 200, r.text
        sid, cid = r.json()["sessionId"], r.json()["correlationId"]
        assert httpx.get(f"{d.url}/api/sessions", params={"correlationId": cid}).json()["sessions"]

        def gone() -> bool:
            listed = httpx.get(f"{d.url}/api/sessions", params={"correlationId": cid}).json()["sessions"]
            return not listed and httpx.get(f"{d.url}/api/sessions/{sid}").status_code == 404

        wait_for(gone, 30, interval=0.2, what="the session to pass retention")
    finally:
        d.stop()


async def _kept_log_batches(home: Path, sid: str) -> int:
    """How many step-log batches of `sid` the daemon's own nats-server keeps in SESSION_LOGS (read there, since
    `/logs` answers 404 as soon as the read model forgets the session, whatever the stream still holds)."""
    nats_dir = home / "nats"
    port = json.loads(next(nats_dir.glob("*.ports")).read_text())["nats"][0].rsplit(":", 1)[1]
    nc = await nats.connect(f"nats://127.0.0.1:{port}", token=(nats_dir / "token").read_text().strip())
    try:
        info = await nc.jetstream().stream_info(SESSION_LOGS, subjects_filter=logs_subject(sid))
        return int((info.state.subjects or {}).get(logs_subject(sid), 0))
    finally:
        await nc.close()


def test_a_runs_kept_log_ages_out_with_the_session(tmp_path: Path) -> None:
    """SESSION_LOGS has SESSION_EVENTS' max_age (issue #16: logs follow the session retention)."""
    env = {"ATLAS_SESSION_RETENTION": "4s", "ATLAS_QUEUE_TIMEOUT": "1s"}
    home = tmp_path / "home"
    d = DaemonProcess(home, [FIXTURES / "quick"], env).start()
    try:
        r = httpx.post(f"{d.url}/api/workspaces/quick/signals/tmpl?nowait=true",
                       json={"payload": {"s": "kept line"}}, timeout=30)
        assert r.status_code == 202, r.text
        sid = r.json()["sessionId"]
        wait_terminal(d, sid)  # its first step prints the line (its second one's template is refused)
        lines = httpx.get(f"{d.url}/api/sessions/{sid}/logs", timeout=10).json()["lines"]
        assert [(line["stepNumber"], line["text"]) for line in lines] == [(1, '["kept line"]')], lines
        assert asyncio.run(_kept_log_batches(home, sid)) >= 1

        def gone() -> bool:
            return (asyncio.run(_kept_log_batches(home, sid)) == 0
                    and httpx.get(f"{d.url}/api/sessions/{sid}/logs", timeout=10).status_code == 404)

        wait_for(gone, 30, interval=0.2, what="the session's log to pass retention")
        assert_error(httpx.get(f"{d.url}/api/sessions/{sid}/logs", timeout=10), 404, "session_not_found")
    finally:
        d.stop()
