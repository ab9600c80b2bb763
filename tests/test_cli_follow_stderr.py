"""Following a run that fails shows why (issue #16, item 8: "the rich view shows stderr of failed steps"), in the
live view (`atlas signal trigger` on a terminal: the Rich tree) and the plain one (not a TTY): a failed shell step's
stderr tail and a failed python step's traceback under the step, as `atlas sessions show` prints them — the live
view with only the traceback's last lines, since it redraws within a terminal's height.

A real CLI process against a real daemon (tests/test_forensics.py's `forensics` workspace), its output captured;
FORCE_COLOR makes Rich treat the pipe as a terminal, as tests/test_forensics.py does for `sessions show`.
"""

from __future__ import annotations

import os
import re
import subprocess

from atlas.cli.client import exit_code_for_status
from tests import test_forensics
from tests.daemon_proc import ATLAS, ROOT, DaemonProcess
from tests.test_forensics import STEPS, line_of

# The forensics daemon (a module-scoped fixture of tests/test_forensics.py), used here by name.
daemon = test_forensics.daemon
#: Colours and the live view's cursor movements.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PREFIX = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  [0-9a-f]{8}  forensics/\w+  ")


def trigger(d: DaemonProcess, signal: str, *, live: bool) -> str:
    """`atlas signal trigger <signal>` until the run ends; its output without escapes (plain: without the
    timestamp, id and job prefix of each line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_") and k != "NO_COLOR"}
    env.update({"COLUMNS": "200", "ATLAS_HOME": str(d.home / "cli")})
    env.update({"FORCE_COLOR": "1", "TERM": "xterm-256color"} if live else {"NO_COLOR": "1"})
    done = subprocess.run([ATLAS, "signal", "trigger", signal, "-w", "forensics", "--url", d.url],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == exit_code_for_status("failed"), done.stdout + done.stderr
    if live:
        assert ESCAPES.search(done.stdout), done.stdout  # the live view really is the live one
        return ESCAPES.sub("", done.stdout)
    return "\n".join(PREFIX.sub("", line) for line in done.stdout.splitlines())


def test_the_live_view_shows_a_failed_shell_steps_stderr_tail(daemon: DaemonProcess) -> None:
    text = trigger(daemon, "disk", live=True)
    assert "stderr (last lines, exit status 3):" in text, text
    assert "  disk full: /var/data" in text, text
    assert "  noise 30" in text


def test_the_live_view_shows_the_end_of_a_failed_python_steps_traceback(daemon: DaemonProcess) -> None:
    text = trigger(daemon, "raise", live=True)
    assert f'File "{STEPS}", line {line_of("PARSE_LINE")}, in _parse' in text, text
    assert re.search(r"… \d+ earlier traceback lines", text), text
    # Only the end: the outer frame is left out.
    assert f'line {line_of("LOAD_LINE")}, in load_rows' not in text, text


def test_the_plain_view_prints_the_stderr_tail_and_the_whole_traceback_under_the_step(daemon: DaemonProcess) -> None:
    lines = trigger(daemon, "disk", live=False).splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("step 1 fill-disk failed in "))
    assert lines[failed + 1] == "  stderr (last lines, exit status 3):", lines
    assert "    disk full: /var/data" in lines[failed + 2:failed + 23], lines

    lines = trigger(daemon, "raise", live=False).splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("step 1 load-rows failed in "))
    assert lines[failed + 1] == "  Traceback (most recent call last):", lines
    after = lines[failed + 1:]
    assert f'    File "{STEPS}", line {line_of("LOAD_LINE")}, in load_rows' in after, lines
    assert f'    File "{STEPS}", line {line_of("PARSE_LINE")}, in _parse' in after, lines
    assert "  ValueError: asked to fail: row 3 is bad" in after, lines
