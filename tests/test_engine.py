"""The FSM engine inside a real daemon (spec §2.4, §2.5, §3.1; §13 items 4–6, 8, 10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_api_core import post, wait_terminal


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("quick-home")
    d = DaemonProcess(home, [FIXTURES / "quick"]).start()
    yield d
    d.stop()


def run(d: DaemonProcess, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = post(d, "quick", sig, {"payload": payload}).json()
    return wait_terminal(d, body["sessionId"])


def test_job_timeout_fails_with_timeout_and_the_running_step_too(quick: DaemonProcess) -> None:
    view = run(quick, "sleepy", {"duration": "10s"})
    assert view["status"] == "failed" and view["errorCode"] == "timeout"
    assert view["error"] == "Job timed out after 1s"
    block = view["agentBlocks"][0]
    assert block["status"] == "failed" and block["errorCode"] == "timeout"


def test_cond_branches_if_skips_sync_python_and_summary(quick: DaemonProcess) -> None:
    left = run(quick, "branch", {"go": "left", "loud": False})
    assert left["status"] == "completed"
    assert left["results"]["doubled"]["value"] == 6
    assert left["results"]["doubled"]["session"] == left["sessionId"]
    assert [b["status"] for b in left["agentBlocks"]] == ["completed", "skipped"]
    assert left["aiSummary"]["summary"] == "went left"
    loud = run(quick, "branch", {"go": "left", "loud": True})
    assert loud["results"]["shout"] == {"go": "left", "loud": True}
    right = run(quick, "branch", {"go": "right"})
    assert right["results"] == {"async": {"async": True, "payload": {"go": "right"}}}


def test_step_limit_and_fsm_stalled(quick: DaemonProcess) -> None:
    limited = run(quick, "limit", {})
    assert limited["status"] == "failed" and limited["errorCode"] == "step_limit"
    assert sum(1 for b in limited["agentBlocks"] if b["status"] == "completed") == 3
    stalled = run(quick, "stall", {})
    assert stalled["status"] == "failed" and stalled["errorCode"] == "fsm_stalled"


def test_shell_argv_is_literal_and_unsafe_template_fails_cleanly(quick: DaemonProcess) -> None:
    nasty = "; rm -rf / $(whoami) `id` | cat > /tmp/x && echo"
    view = run(quick, "tmpl", {"s": nasty})
    first, second = view["agentBlocks"]
    assert first["status"] == "completed"
    assert first["output"]["stdout"].strip() == '["' + nasty.replace("`", "`") + '"]'
    assert second["status"] == "failed" and second["errorCode"] == "template_error"
    assert view["status"] == "failed" and view["errorCode"] == "template_error"
    assert run(quick, "echo", {"still": "healthy"})["status"] == "completed"


def test_event_log_seq_runs_without_gaps(quick: DaemonProcess) -> None:
    import httpx

    view = run(quick, "branch", {"go": "right"})
    assert view["lastSeq"] == 6  # queued, start, step:start, step:complete, summary, complete
    events = []
    with httpx.stream("GET", f"{quick.url}/api/sessions/{view['sessionId']}/stream", timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line[6:].startswith('{"type"'):
                import json

                events.append(json.loads(line[6:]))
    assert [e["seq"] for e in events] == list(range(1, 7))
    assert [e["type"] for e in events][-1] == "session:complete"
    assert all(e["sessionId"] == view["sessionId"] and e["timestamp"].endswith("Z") for e in events)
