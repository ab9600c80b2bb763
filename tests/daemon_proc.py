"""A real atlasd in a child process, for the integration tests (real nats-server, HTTP, SQLite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ATLAS = str(Path(sys.executable).parent / "atlas")


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (any of its threads), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return found


def exporter_pid(daemon_pid: int) -> int | None:
    """The daemon's trace exporter process (`python -m atlas.observability.span_export`), when it has one."""
    for child in child_pids(daemon_pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"atlas.observability.span_export" in argv:
            return child
    return None


class DaemonProcess:
    def __init__(self, home: Path, workspaces: list[Path], env: dict[str, str] | None = None) -> None:
        self.home = home
        self.workspaces = workspaces
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = home / "daemon-test.log"

    def start(self, timeout: float = 30.0, port: int = 0) -> DaemonProcess:
        """Start the daemon on `port` (0: a free one; a restart passes the old one to keep the URL)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "daemon.json").unlink(missing_ok=True)
        args = [ATLAS, "daemon", "start", "--home", str(self.home), "--port", str(port)]
        for ws in self.workspaces:
            args += ["--workspace", str(ws)]
        env = {**os.environ, "ATLAS_LOG_LEVEL": "info", **self.extra_env}
        env.pop("ATLAS_NATS_URL", None) if "ATLAS_NATS_URL" not in self.extra_env else None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        info_file = self.home / "daemon.json"

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return info_file.exists() and info_file.stat().st_size > 0

        wait_for(ready, timeout, what="daemon.json")
        self.url = json.loads(info_file.read_text())["url"]
        wait_for(lambda: self._health_ok(), timeout, what="/health ok")
        return self

    def _health_ok(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=2).json().get("status") == "ok"
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def nats_pid(self) -> int | None:
        pid_file = self.home / "nats" / "nats.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None
