"""`atlas schedules list|pause|resume` against a real daemon with cron schedules (issue 6)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import ATLAS, FIXTURES, DaemonProcess


@pytest.fixture(scope="module")
def cron_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("cron-home")
    d = DaemonProcess(home, [FIXTURES / "cron"]).start()
    yield d
    d.stop()


def atlas(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ATLAS, *args, "--url", d.url], capture_output=True, text=True, timeout=30)


def test_schedules_list_pause_resume(cron_daemon: DaemonProcess) -> None:
    listed = atlas(cron_daemon, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {(e["workspaceId"], e["signalId"]): e for e in json.loads(listed.stdout)["schedules"]}
    nightly = entries[("cron", "nightly")]
    assert nightly["timezone"] == "Europe/Berlin" and nightly["nextRun"].endswith("Z")
    paused = atlas(cron_daemon, "schedules", "pause", "cron", "nightly", "--json")
    assert paused.returncode == 0 and json.loads(paused.stdout)["paused"] is True
    human = atlas(cron_daemon, "schedules", "list")
    assert "cron/nightly" in human.stdout and "paused" in human.stdout
    resumed = atlas(cron_daemon, "schedules", "resume", "cron", "nightly", "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["paused"] is False
    missing = atlas(cron_daemon, "schedules", "pause", "cron", "nope")
    assert missing.returncode == 4 and "schedule_not_found" in missing.stderr
