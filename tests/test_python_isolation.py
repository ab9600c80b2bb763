"""Python steps out of the daemon's event loop (issue #16, item 3), end to end with a real daemon.

A step that blocks its thread (`time.sleep`, never awaiting) must leave the daemon answering: the steps of the
`isolation` fixture write `started`, block until the test creates `release`, then write `ended`, so `/health`
answered while `ended` does not exist yet was answered while the step was blocking (no timing is measured). A
blocking `async def` step is cancelled like any other (the run ends at once); one that awaits gets CancelledError
on its own loop. `atlas workspace add` of a changed workspace runs the changed code without a restart. `print()`
and `logging` inside a step reach the step's live output and its durable log, not the daemon's terminal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for
from tests.test_api_core import post, wait_terminal


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture: the reload test edits its code."""
    copy = tmp_path_factory.mktemp("isolation-ws") / "isolation"
    shutil.copytree(FIXTURES / "isolation", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, workspace: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("isolation-home"), [workspace]).start()
    try:
        yield d
    finally:
        d.stop()


def start(d: DaemonProcess, job: str, where: Path) -> str:
    r = post(d, "isolation", job, {"payload": {"dir": str(where)}})
    assert r.status_code == 202, r.text
    sid: str = r.json()["sessionId"]
    wait_for(lambda: (where / "started").exists(), 30, what=f"{job} to start")
    return sid


def health_while_blocked(d: DaemonProcess, where: Path) -> None:
    """/health answers while the step is still blocked (it cannot end before `release` exists)."""
    r = httpx.get(d.url + "/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert not (where / "ended").exists()


@pytest.mark.parametrize("job", ["async-block", "sync-block"])
def test_a_blocking_step_does_not_freeze_the_daemon(daemon: DaemonProcess, tmp_path: Path, job: str) -> None:
    sid = start(daemon, job, tmp_path)
    health_while_blocked(daemon, tmp_path)
    # and the run itself is live meanwhile: its view says the step runs
    view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=30).json()
    assert view["status"] == "active" and view["agentBlocks"][0]["status"] == "running", view
    (tmp_path / "release").touch()
    view = wait_terminal(daemon, sid)
    assert view["status"] == "completed", view
    assert view["agentBlocks"][0]["output"] == {"released": True}
    assert (tmp_path / "ended").exists()


def cancel(d: DaemonProcess, sid: str) -> dict[str, Any]:
    r = httpx.delete(f"{d.url}/api/sessions/{sid}", timeout=30)
    assert r.status_code in (200, 202), r.text
    return wait_terminal(d, sid)


def test_cancelling_a_blocking_async_step_ends_the_run_as_cancelled(daemon: DaemonProcess, tmp_path: Path) -> None:
    sid = start(daemon, "async-block", tmp_path)
    try:
        view = cancel(daemon, sid)
        assert view["status"] == "cancelled", view
        assert not (tmp_path / "ended").exists()  # ended while its step's thread still blocks
    finally:
        (tmp_path / "release").touch()
    wait_for(lambda: (tmp_path / "ended").exists(), 30, what="the blocked thread to finish")
    assert httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=30).json()["status"] == "cancelled"


def test_an_awaiting_async_step_gets_cancelled_on_its_own_loop(daemon: DaemonProcess, tmp_path: Path) -> None:
    sid = start(daemon, "async-await", tmp_path)
    view = cancel(daemon, sid)
    assert view["status"] == "cancelled", view
    wait_for(lambda: (tmp_path / "cancelled").exists(), 30, what="the step to see CancelledError")


def live_log(d: DaemonProcess, sid: str) -> list[tuple[str, str]]:
    """(stream, line) of the `log` chunks the run's live view holds for its first step."""
    view = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=30).json()
    blocks = view.get("agentBlocks") or [{}]
    return [(chunk["stream"], line) for chunk in blocks[0].get("ephemeral") or [] if chunk.get("type") == "log"
            for line in chunk["line"].split("\n")]


def test_print_and_logging_reach_the_steps_live_output(daemon: DaemonProcess, tmp_path: Path) -> None:
    sid = start(daemon, "output", tmp_path)
    try:
        expected = [
            ("stdout", "hello from print"),
            ("stdout", "partial line joined"),
            ("stderr", "WARNING isolation.user: a warning from logging"),
            ("stderr", "INFO root: an info on the root logger"),
        ]
        wait_for(lambda: all(line in live_log(daemon, sid) for line in expected), 30,
                 what=f"the step's output in its live view: {live_log(daemon, sid)}")
    finally:
        (tmp_path / "release").touch()
    assert wait_terminal(daemon, sid)["status"] == "completed"
    # kept with the run once it has ended (durable step logs, issue #16 item 1)
    page = httpx.get(f"{daemon.url}/api/sessions/{sid}/logs", timeout=30).json()
    kept = [(line["stream"], text) for line in page["lines"] if line["stepNumber"] == 1
            for text in line["text"].split("\n")]
    assert all(line in kept for line in expected), kept
    log = daemon.log()
    for text in ("hello from print", "partial line joined", "a warning from logging", "an info on the root"):
        assert text not in log, f"{text!r} reached the daemon's terminal"


def test_an_async_step_that_prints_then_raises_keeps_both_after_the_run(daemon: DaemonProcess) -> None:
    """The traceback of a step run on its own loop still starts at the user's code (the daemon's frames, the
    worker thread's and its loop's included, are trimmed), and what it printed is kept with the run."""
    r = post(daemon, "isolation", "print-raise", {"payload": {}})
    assert r.status_code == 202, r.text
    sid = r.json()["sessionId"]
    view = wait_terminal(daemon, sid)
    assert view["status"] == "failed", view
    details = view["agentBlocks"][0]["errorDetails"]
    lines = (FIXTURES / "isolation" / "isolation_steps.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith("# raises here"))
    assert details["traceback"].startswith("Traceback (most recent call last):\n  File "), details
    first_frame = details["traceback"].splitlines()[1]
    assert first_frame.endswith(f'isolation_steps.py", line {line}, in print_raise'), details["traceback"]
    assert details["traceback"].endswith("ValueError: row 3 is bad")
    page = httpx.get(f"{daemon.url}/api/sessions/{sid}/logs", timeout=30).json()
    assert ("stdout", "loading rows") in [(line["stream"], line["text"]) for line in page["lines"]], page


ADDED = """

def version(ctx):
    return {"version": 2}


def added(ctx):
    return {"added": True}
"""


def test_workspace_add_again_runs_the_changed_code(daemon: DaemonProcess, workspace: Path) -> None:
    def run(job: str) -> dict[str, Any]:
        r = post(daemon, "isolation", job, {"payload": {}})
        assert r.status_code == 202, r.text
        return wait_terminal(daemon, r.json()["sessionId"])

    assert run("reloaded")["agentBlocks"][0]["output"] == {"version": 1}
    steps = workspace / "isolation_steps.py"
    steps.write_text(steps.read_text().replace("def version(ctx):\n    return {\"version\": 1}\n", "") + ADDED)
    config = workspace / "workspace.yml"
    text = config.read_text()
    text = text.replace("agents:\n", "  added: { provider: http, concurrency: concurrent, config: { path: /added } }\n"
                                      "agents:\n", 1)
    text = text.replace("jobs:\n", '  added: { type: python, config: { entrypoint: "isolation_steps:added" } }\n'
                                    "jobs:\n  added:\n    triggers: [ { signal: added } ]\n"
                                    "    execution: { strategy: sequential, agents: [ added ] }\n", 1)
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env["ATLAS_HOME"] = str(daemon.home / "cli")
    done = subprocess.run([ATLAS, "workspace", "add", str(workspace), "--url", daemon.url], capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run("reloaded")["agentBlocks"][0]["output"] == {"version": 2}
    view = run("added")
    assert view["status"] == "completed", view
    assert view["agentBlocks"][0]["output"] == {"added": True}
