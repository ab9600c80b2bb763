"""Retention (spec §7.3): old terminal sessions leave the read model and JetStream; the daemon refuses a retention
that does not outlive the queue timeout plus the longest job timeout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess, wait_for


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
