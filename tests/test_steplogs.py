"""Durable step logs (issue #16, item 1), end to end with a real daemon: what a shell step prints (stdout and
stderr) and what a python step writes through `emit_log` are kept with the run and served by
`GET /api/sessions/<id>/logs` after the run ended, with step numbers, streams and timestamps, in order; paging by
cursor returns each line once; a step's log is cut at its bound with one marker line; a `secret()` value is
redacted; `?follow=true` streams lines live (SSE) and ends with the session; `atlas sessions logs [--follow]`
prints them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.cli.sse import Frame, parse_sse
from atlas.runtime.steplogs import MAX_STEP_LINES, cut_marker
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for
from tests.test_api_core import assert_error, post, wait_terminal

WORKSPACE = FIXTURES / "steplogs"
SECRET = "s3cr3t-steplogs-77d1"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("steplogs"), [WORKSPACE], {"STEPLOGS_SECRET": SECRET}).start()
    try:
        yield d
    finally:
        d.stop()


def run(d: DaemonProcess, signal: str, payload: dict[str, Any] | None = None) -> str:
    r = post(d, "steplogs", signal, {"payload": payload or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["sessionId"])


def logs(d: DaemonProcess, sid: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{d.url}/api/sessions/{sid}/logs", params=params, timeout=30)


def all_lines(d: DaemonProcess, sid: str) -> list[dict[str, Any]]:
    """The whole kept log of an ended session, read in pages of 10,000 lines."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 10_000}
    while True:
        r = logs(d, sid, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["lines"])
        if body["ended"]:
            return out
        assert body["lines"], body  # the run has ended: a page short of the end is never empty
        params["after"] = body["nextCursor"]


@pytest.fixture(scope="module")
def talked(daemon: DaemonProcess) -> str:
    sid = run(daemon, "talk")
    assert wait_terminal(daemon, sid)["status"] == "completed"
    return sid


def test_shell_and_python_lines_are_kept_after_the_run_with_steps_and_streams(daemon: DaemonProcess,
                                                                              talked: str) -> None:
    lines = all_lines(daemon, talked)
    for line in lines:
        assert set(line) == {"ts", "stepNumber", "stream", "text"}, line
        assert TS.match(line["ts"]), line
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    shell = [(line["stream"], line["text"]) for line in lines if line["stepNumber"] == 1]
    python = [(line["stream"], line["text"]) for line in lines if line["stepNumber"] == 2]
    # Each stream in the order it was written (stdout and stderr are two pipes: their interleaving is the OS's).
    assert [t for s, t in shell if s == "stdout"] == ["out one", "token is ***", "out two"]
    assert [t for s, t in shell if s == "stderr"] == ["err one", "err two"]
    assert python == [("stdout", "py says hello"), ("stderr", "py warns"), ("stdout", "py says bye")]
    # Step 1's lines all come before step 2's.
    assert [line["stepNumber"] for line in lines] == [1] * len(shell) + [2] * len(python)


def test_a_python_step_that_prints_logs_and_raises_keeps_all_of_it_with_its_traceback(daemon: DaemonProcess) -> None:
    sid = run(daemon, "crash")
    assert wait_terminal(daemon, sid)["status"] == "failed"
    lines = all_lines(daemon, sid)
    assert {line["stepNumber"] for line in lines} == {1}
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == ["loading rows"]
    stderr = [line["text"] for line in lines if line["stream"] == "stderr"]
    assert any("row 3 looks odd" in text for text in stderr), stderr
    # The traceback ends the log, naming the step's file and line (what Python itself would have printed).
    steps = (WORKSPACE / "steplogs_steps.py").resolve()
    raise_line = next(i for i, text in enumerate(steps.read_text().splitlines(), 1) if text.endswith("# RAISE_LINE"))
    start = stderr.index("Traceback (most recent call last):")
    assert start > stderr.index(next(t for t in stderr if "row 3 looks odd" in t))
    assert f'  File "{steps}", line {raise_line}, in print_then_raise' in stderr[start:]
    assert stderr[-1] == "ValueError: row 3 is bad"


def test_a_secret_is_redacted_in_the_kept_log(daemon: DaemonProcess, talked: str) -> None:
    r = logs(daemon, talked)
    assert SECRET not in r.text
    assert "token is ***" in r.text


def test_paging_by_cursor_returns_each_line_once(daemon: DaemonProcess, talked: str) -> None:
    whole = all_lines(daemon, talked)
    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(len(whole) + 2):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["after"] = cursor
        body = logs(daemon, talked, **params).json()
        assert len(body["lines"]) <= 2
        paged.extend(body["lines"])
        cursor = body["nextCursor"]
        if body["ended"]:
            break
    assert paged == whole
    # Past the end: nothing more, and the same cursor.
    body = logs(daemon, talked, after=cursor).json()
    assert body == {"lines": [], "nextCursor": cursor, "ended": True}


def test_a_step_log_is_cut_at_its_bound_with_one_marker(daemon: DaemonProcess) -> None:
    sid = run(daemon, "flood")
    assert wait_terminal(daemon, sid, timeout=60)["status"] == "completed"
    lines = all_lines(daemon, sid)
    assert len(lines) == MAX_STEP_LINES + 1
    assert [line["text"] for line in lines[:-1]] == [f"line {i}" for i in range(1, MAX_STEP_LINES + 1)]
    assert lines[-1]["stream"] == "atlas" and lines[-1]["stepNumber"] == 1
    assert lines[-1]["text"] == cut_marker(1, 50)


def test_unknown_session_and_bad_queries_answer_json_errors(daemon: DaemonProcess, talked: str) -> None:
    assert_error(logs(daemon, "no-such-session"), 404, "session_not_found")
    assert_error(logs(daemon, talked, after="nonsense"), 400, "invalid_query")
    assert_error(logs(daemon, talked, limit=0), 400, "invalid_query")
    assert_error(logs(daemon, talked, follow="maybe"), 400, "invalid_query")


def follow_frames(d: DaemonProcess, sid: str, on_frame: Any = None, **params: Any) -> list[Frame]:
    frames: list[Frame] = []
    with httpx.stream("GET", f"{d.url}/api/sessions/{sid}/logs", params={"follow": "true", **params},
                      timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for frame in parse_sse(r.iter_lines()):
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
    return frames


def texts(frames: list[Frame]) -> list[str]:
    return [line["text"] for f in frames if f.event == "logs" for line in json.loads(f.data)["lines"]]


def test_follow_delivers_lines_live_and_ends_with_the_session(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    sid = run(daemon, "gated", {"gate": str(gate)})
    seen: list[str] = []

    def on_frame(frame: Frame) -> None:
        if frame.event == "logs":
            seen.extend(line["text"] for line in json.loads(frame.data)["lines"])
            if "before gate" in seen:  # the step is still running, waiting for the gate: open it
                gate.touch()

    frames = follow_frames(daemon, sid, on_frame)
    assert texts(frames) == ["before gate", "after gate"]
    assert frames[-1].event == "end" and json.loads(frames[-1].data) == {"status": "completed"}
    # Each logs frame's id is its nextCursor (what Last-Event-ID resumes from).
    for frame in frames:
        if frame.event == "logs":
            assert frame.id == json.loads(frame.data)["nextCursor"]
    # Resuming from the first frame's cursor sends only what followed it.
    first = next(f for f in frames if f.event == "logs")
    rest = follow_frames(daemon, sid, after=first.id)
    assert texts(rest) == texts(frames)[len(json.loads(first.data)["lines"]):]


def test_follow_of_a_finished_run_replays_and_ends(daemon: DaemonProcess, talked: str) -> None:
    frames = follow_frames(daemon, talked)
    assert texts(frames) == [line["text"] for line in all_lines(daemon, talked)]
    assert frames[-1].event == "end"


def cli(d: DaemonProcess, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({"COLUMNS": "200", "ATLAS_HOME": str(d.home / "cli"), "NO_COLOR": "1"})
    return subprocess.Popen([ATLAS, *args, "--url", d.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


CLI_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \[step (\d+)\] (\w+) \| (.*)$")


def test_cli_prints_the_kept_log_with_a_short_id(daemon: DaemonProcess, talked: str) -> None:
    proc = cli(daemon, "sessions", "logs", talked[:8])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    printed = [CLI_LINE.match(line) for line in out.splitlines()]
    assert all(printed), out
    expected = [(str(x["stepNumber"]), x["stream"], x["text"]) for x in all_lines(daemon, talked)]
    assert [m.groups() for m in printed if m] == expected
    assert SECRET not in out


def test_cli_follow_prints_lines_live_and_exits_with_the_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    sid = run(daemon, "gated", {"gate": str(gate)})
    proc = cli(daemon, "sessions", "logs", sid, "--follow")
    assert proc.stdout is not None
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: any(line.endswith("stdout | before gate") for line in lines), 30,
             what="the first line, while the step still runs")
    assert not any("after gate" in line for line in lines)
    gate.touch()
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    reader.join(timeout=10)
    assert [CLI_LINE.match(line).groups()[2] for line in lines if CLI_LINE.match(line)] == [  # type: ignore[union-attr]
        "before gate", "after gate"]


def test_cli_prints_a_failed_runs_prints_and_traceback_after_it_ended(daemon: DaemonProcess) -> None:
    """The issue's "Done when": a python step that prints and then raises shows its prints and a traceback with its
    file and line in `atlas sessions logs`, once the run has ended."""
    sid = run(daemon, "crash")
    assert wait_terminal(daemon, sid)["status"] == "failed"
    proc = cli(daemon, "sessions", "logs", sid)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    printed = [m.groups() for m in map(CLI_LINE.match, out.splitlines()) if m]
    assert ("1", "stdout", "loading rows") in printed, out
    steps = (WORKSPACE / "steplogs_steps.py").resolve()
    raise_line = next(i for i, text in enumerate(steps.read_text().splitlines(), 1) if text.endswith("# RAISE_LINE"))
    assert ("1", "stderr", f'  File "{steps}", line {raise_line}, in print_then_raise') in printed, out
    assert printed[-1] == ("1", "stderr", "ValueError: row 3 is bad"), out
