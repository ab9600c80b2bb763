"""Errors with their cause (issue #16, item 2; item 8's "the rich view shows stderr of failed steps"), end to end with a
real daemon: a python step that raises records `errorDetails` with a traceback naming the step's file and lines
(the daemon's own frames trimmed, secrets redacted); a shell step that fails records its last stderr lines; a
cascade whose grandchild's shell step fails carries the grandchild's stderr up to the root as a nested `cause`; the
events match the published schemas; `atlas sessions show` prints all of it, in plain and in rich mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.agents.errordetails import STDERR_TAIL_LINES, TAIL_CUT_MARKER
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess
from tests.test_api_core import post, wait_terminal
from tests.test_event_schemas import check_log, document, durable_events

WORKSPACE = FIXTURES / "forensics"
STEPS = (WORKSPACE / "forensics_steps.py").resolve()
SECRET = "s3cr3t-forensics-4f9a"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def line_of(marker: str) -> int:
    """The line of forensics_steps.py that carries `# <marker>`."""
    lines = STEPS.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("forensics"), [WORKSPACE], {"FORENSICS_SECRET": SECRET}).start()
    try:
        yield d
    finally:
        d.stop()


def run(d: DaemonProcess, signal: str) -> dict[str, Any]:
    r = post(d, "forensics", signal, {"payload": {}})
    assert r.status_code == 202, r.text
    return wait_terminal(d, r.json()["sessionId"])


def events_of(d: DaemonProcess, sid: str) -> list[dict[str, Any]]:
    return durable_events(d, sid)


def failed_block(view: dict[str, Any]) -> dict[str, Any]:
    [block] = [b for b in view["agentBlocks"] if b["status"] == "failed"]
    return block


def cli_show(d: DaemonProcess, sid: str, *, rich: bool) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_") and k != "NO_COLOR"}
    env.update({"COLUMNS": "200", "ATLAS_HOME": str(d.home / "cli")})
    env.update({"FORCE_COLOR": "1", "TERM": "xterm-256color"} if rich else {"NO_COLOR": "1"})
    done = subprocess.run([ATLAS, "sessions", "show", sid, "--url", d.url], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_python_step_that_raises_records_a_traceback_naming_its_file_and_lines(daemon: DaemonProcess) -> None:
    view = run(daemon, "raise")
    assert view["status"] == "failed", view
    block = failed_block(view)
    assert block["error"] == "ValueError: asked to fail: row 3 is bad"
    details = block["errorDetails"]
    assert details["type"] == "ValueError"
    assert details["message"] == "asked to fail: row 3 is bad"
    traceback = details["traceback"]
    assert traceback.startswith("Traceback (most recent call last):\n"), traceback
    assert f'File "{STEPS}", line {line_of("LOAD_LINE")}, in load_rows' in traceback
    assert f'File "{STEPS}", line {line_of("PARSE_LINE")}, in _parse' in traceback
    assert traceback.endswith("ValueError: asked to fail: row 3 is bad")
    # The daemon's frames (how atlas called the step: its agents, asyncio, the thread pool) are trimmed.
    assert "atlas/agents" not in traceback and "asyncio" not in traceback and "concurrent" not in traceback
    frames = re.findall(r'^  File "([^"]+)"', traceback, re.MULTILINE)
    assert frames and all(frame == str(STEPS) for frame in frames), frames
    # On the event, as the schema says.
    events = events_of(daemon, view["sessionId"])
    [complete] = [e for e in events if e["type"] == "step:complete"]
    assert complete["errorDetails"] == details
    check_log(document(daemon), events)


def test_a_secret_in_the_exception_is_redacted_from_the_details(daemon: DaemonProcess) -> None:
    view = run(daemon, "leak")
    assert view["status"] == "failed", view
    block = failed_block(view)
    assert block["errorDetails"]["type"] == "PermissionError"
    assert block["errorDetails"]["message"] == "token *** was rejected"
    assert block["errorDetails"]["traceback"].endswith("PermissionError: token *** was rejected")
    assert f'File "{STEPS}"' in block["errorDetails"]["traceback"]
    raw = httpx.get(f"{daemon.url}/api/sessions/{view['sessionId']}/stream", timeout=30).text
    assert SECRET not in raw and SECRET not in json.dumps(view)


def test_a_failed_shell_step_records_its_last_stderr_lines(daemon: DaemonProcess) -> None:
    view = run(daemon, "disk")
    assert view["status"] == "failed", view
    block = failed_block(view)
    assert block["error"] == "command exited with status 3"
    details = block["errorDetails"]
    assert details["type"] == "ShellError" and details["exitCode"] == 3
    assert details["message"] == "command exited with status 3"
    lines = details["stderrTail"].split("\n")
    # 31 lines went to stderr: the last 20 are kept, after a marker; stdout is not part of it.
    assert lines[0] == TAIL_CUT_MARKER and len(lines) == STDERR_TAIL_LINES + 1, lines
    assert lines[-1] == "disk full: /var/data" and lines[1] == "noise 12", lines
    assert "working" not in details["stderrTail"]
    check_log(document(daemon), events_of(daemon, view["sessionId"]))


def test_a_cascade_carries_the_grandchilds_stderr_up_as_a_cause_chain(daemon: DaemonProcess) -> None:
    root = run(daemon, "grandparent")
    assert root["status"] == "failed", root
    children = httpx.get(f"{daemon.url}/api/sessions/{root['sessionId']}/children", timeout=10).json()["sessions"]
    [parent] = children
    [child] = httpx.get(f"{daemon.url}/api/sessions/{parent['sessionId']}/children", timeout=10).json()["sessions"]
    # The root's failed signal step and the root itself carry the chain: parent, then the child with its stderr.
    for cause in (failed_block(root)["cause"], root["cause"]):
        assert cause["sessionId"] == parent["sessionId"] and cause["jobName"] == "parent"
        assert cause["status"] == "failed" and cause["errorCode"] == "child_failed"
        assert cause["stepNumber"] == 1 and cause["workspaceId"] == "forensics"
        inner = cause["cause"]
        assert inner["sessionId"] == child["sessionId"] and inner["jobName"] == "disk"
        assert inner["errorCode"] == "exit_status" and inner["error"] == "command exited with status 3"
        assert inner["agentName"] == "fill-disk" and inner["stepNumber"] == 1
        assert inner["errorDetails"]["stderrTail"].endswith("disk full: /var/data")
        assert "cause" not in inner
    # The middle session shows its own one-level chain.
    middle = wait_terminal(daemon, parent["sessionId"])
    assert middle["cause"]["sessionId"] == child["sessionId"]
    assert middle["cause"]["errorDetails"]["exitCode"] == 3
    doc = document(daemon)
    for sid in (root["sessionId"], parent["sessionId"]):
        check_log(doc, events_of(daemon, sid))
        doc.check_component("SessionView", httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=10).json())


def test_sessions_show_prints_the_traceback_the_stderr_tail_and_the_cause_chain(daemon: DaemonProcess) -> None:
    raised = run(daemon, "raise")
    for rich in (False, True):
        out = cli_show(daemon, raised["sessionId"], rich=rich)
        assert bool(ANSI.search(out)) is rich, out  # the rich view really is the rich one
        text = ANSI.sub("", out)
        assert "Failure" in text
        assert f'File "{STEPS}", line {line_of("PARSE_LINE")}, in _parse' in text, text
        assert "ValueError: asked to fail: row 3 is bad" in text

    root = run(daemon, "grandparent")
    [parent] = httpx.get(f"{daemon.url}/api/sessions/{root['sessionId']}/children", timeout=10).json()["sessions"]
    [child] = httpx.get(f"{daemon.url}/api/sessions/{parent['sessionId']}/children", timeout=10).json()["sessions"]
    for rich in (False, True):
        text = ANSI.sub("", cli_show(daemon, root["sessionId"], rich=rich))
        lines = text.splitlines()
        # The chain, outermost first, each level led by its full sessionId.
        first = next(i for i, line in enumerate(lines) if line.strip().startswith(f"caused by {parent['sessionId']}"))
        second = next(i for i, line in enumerate(lines) if line.strip().startswith(f"caused by {child['sessionId']}"))
        assert first < second, text
        assert "forensics/disk" in lines[second]
        tail = "\n".join(lines[second:])
        assert "exit_status: command exited with status 3" in tail
        assert "disk full: /var/data" in tail, text


def test_a_shell_step_failing_in_the_cli_view_shows_its_stderr(daemon: DaemonProcess, tmp_path: Path) -> None:
    view = run(daemon, "disk")
    text = cli_show(daemon, view["sessionId"], rich=False)
    section = text[text.index("\nFailure\n"):]
    assert "step 1 fill-disk failed: exit_status: command exited with status 3" in section
    assert "stderr (last lines, exit status 3):" in section
    assert "    disk full: /var/data" in section
