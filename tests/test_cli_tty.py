"""The CLI in a real terminal (tmux): the live view of `atlas signal trigger`, its final status line, colours,
and Ctrl-C detaching without cancelling (spec §11)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_proc import ATLAS, ROOT, DaemonProcess

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_counter = itertools.count()


class Pane:
    """One tmux server with one 160×40 pane running bash, so the CLI sees a real terminal."""

    def __init__(self, env: dict[str, str]) -> None:
        assert TMUX is not None
        self.socket = f"atlas-cli-test-{os.getpid()}-{next(_counter)}"
        self.tmpdir = tempfile.mkdtemp(prefix="atlas-tmux-")  # short: a socket path has at most 107 bytes
        self.env = {**env, "TMUX_TMPDIR": self.tmpdir}
        self.tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "40", "bash --norc --noprofile")
        self.tmux("set-option", "-t", "t", "history-limit", "5000")

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run([TMUX, "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                              env=self.env, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def run(self, command: str) -> str:
        """Type a command; its exit code is printed afterwards as `EXIT<k>=<code>` (spelt so the command line
        itself never matches, numbered so an earlier command's line never does). Returns the regex of that line."""
        k = next(_counter)
        self.tmux("send-keys", "-t", "t", f'clear; {command}; echo "EX""IT{k}=$?"', "Enter")
        return rf"^EXIT{k}=(\d+)$"

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "t", *(["-e"] if escapes else []))

    def wait(self, pattern: str, timeout: float = 30) -> tuple[str, re.Match[str]]:
        """Poll the screen until `pattern` (a multiline regex) shows; returns the screen and the match."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            match = re.search(pattern, text, re.M)
            if match:
                return text, match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; the screen shows:\n{text}")
            time.sleep(0.05)

    def close(self) -> None:
        assert TMUX is not None
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, env=self.env, timeout=30)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def pane(daemon: DaemonProcess, tmp_path: Path) -> Iterator[Pane]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_") and k not in ("NO_COLOR", "TMUX")}
    env.update({"ATLAS_URL": daemon.url, "ATLAS_HOME": str(tmp_path), "TERM": "xterm-256color",
                "PATH": f"{Path(ATLAS).parent}:{env.get('PATH', '')}", "PS1": "$ "})
    p = Pane(env)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def demo(daemon: DaemonProcess) -> DaemonProcess:
    """The daemon with examples/demo added: count-and-sleep emits progress chunks with current/total."""
    r = httpx.post(daemon.url + "/api/workspaces/add", json={"path": str(ROOT / "examples" / "demo")}, timeout=30)
    assert r.status_code in (200, 201), r.text
    return daemon


def session(d: DaemonProcess, sid: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=10).json()
    return view


def test_trigger_shows_live_progress_then_the_final_status_line(demo: DaemonProcess, pane: Pane) -> None:
    done = pane.run("atlas signal trigger count-and-sleep -w demo -d '{\"count\": 8, \"interval\": 0.4}'")
    _, ids = pane.wait(rf"^correlationId  ({UUID})\nsessionId      ({UUID})$")
    sid = ids.group(2)
    # While it runs: a spinner headline, the session active, its first step running with a progress bar.
    live, _ = pane.wait(r"^├── ● running  1\. counter \(agent\)  \d")
    assert re.search(r"^\S Following correlation [0-9a-f]{8}  1 session, 1 in progress  ", live, re.M), live
    assert re.search(rf"^● active  demo/count-and-sleep  {sid[:8]}  ", live, re.M), live
    progress, _ = pane.wait(r"^│   ━+.* [1-7]/8$")
    assert "└── · pending  stamp (agent)" in progress
    colours = pane.screen(escapes=True)
    assert "\x1b[" in colours  # styled output on a terminal
    final, end = pane.wait(done)
    assert end.group(1) == "0"
    lines = final.splitlines()
    status_line = lines[lines.index(end.group(0)) - 1]
    assert re.fullmatch(rf"✓ completed  demo/count-and-sleep \({sid[:8]}\) in \d+\.\ds", status_line), final
    assert re.search(r"^├── ✓ completed  1\. counter \(agent\)  \d+\.\ds  → \{\"counted\": 8\}$", final, re.M), final
    assert re.search(r"^└── ✓ completed  2\. stamp \(agent\)  \d+ms", final, re.M), final
    assert "Following correlation" in final and "0 in progress" in final  # the headline stays, without spinner
    assert session(demo, sid)["status"] == "completed"


def test_cascade_tree_in_the_terminal(daemon: DaemonProcess, pane: Pane) -> None:
    done = pane.run("atlas signal trigger fan -w core -d '{\"n\": 2}'")
    final, end = pane.wait(done)
    assert end.group(1) == "0"
    assert re.search(r"^└── ✓ completed  other/child  [0-9a-f]{8}  ", final, re.M), final
    assert re.search(r"^    └── ✓ completed  1\. atlas/echo \(agent\)", final, re.M), final
    assert re.search(r"^✓ completed  core/fan \([0-9a-f]{8}\) in .*; tree: 2 sessions \(2 completed\)$", final,
                     re.M), final


def test_ctrl_c_detaches_and_says_how_to_resume(daemon: DaemonProcess, pane: Pane) -> None:
    done = pane.run("atlas signal trigger slow -w core -d '{\"duration\": \"60s\"}'")
    _, ids = pane.wait(rf"^correlationId  ({UUID})\nsessionId      ({UUID})$")
    cid, sid = ids.group(1), ids.group(2)
    pane.wait(r"^└── ● running  1\. wait \(agent\)")
    pane.keys("C-c")
    screen, end = pane.wait(done)
    assert end.group(1) == "130"
    assert ("Detached: the run keeps going (nothing was cancelled). Resume with: atlas follow --correlation-id "
            f"{cid}") in screen.replace("\n", "")
    assert session(daemon, sid)["status"] == "active"  # nothing was cancelled
    screen, end = pane.wait(pane.run(f"atlas sessions cancel {sid[:8]} --yes"))
    assert end.group(1) == "0" and f"Session {sid} is now ⊘ cancelled" in screen
    assert session(daemon, sid)["status"] == "cancelled"
