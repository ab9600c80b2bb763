"""More of the durable step log (issue #16, item 1), end to end with a real daemon: an `http` step's diagnostics
(method, URL, status and time; the error of a failed request; no user info, `secret()` values redacted) and an
`llm` step's tool calls and results (stream `tool`, from a real MCP server and the scripted model server) are kept
with the run and served by `GET /api/sessions/<id>/logs` after it ended.

The daemon and the helpers are tests/test_steplogs.py's (its `steplogs` workspace); the local HTTP server is
tests/test_agents.py's `http_base`, and the llm daemon tests/test_follow_tools.py's `agents_daemon`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests import test_agents, test_steplogs
from tests.daemon_proc import DaemonProcess
from tests.fake_models import Reply, ToolCall
from tests.test_api_core import wait_terminal
from tests.test_follow_tools import agents_daemon
from tests.test_steplogs import SECRET, all_lines, logs, run

# Other modules' fixtures, used here by name: the steplogs daemon (module-scoped) and a local HTTP server.
daemon = test_steplogs.daemon
http_base = test_agents.http_base


def kept(d: DaemonProcess, sid: str) -> list[tuple[int, str, str]]:
    return [(line["stepNumber"], line["stream"], line["text"]) for line in all_lines(d, sid)]


def test_an_http_step_keeps_its_request_line_without_user_info(daemon: DaemonProcess,
                                                                 http_base: str) -> None:
    host = http_base.removeprefix("http://")
    sid = run(daemon, "call", {"url": f"http://someone:hunter2-pw@{host}/json"})
    assert wait_terminal(daemon, sid)["status"] == "completed"
    [(step, stream, text)] = kept(daemon, sid)
    assert (step, stream) == (1, "stdout")
    assert re.fullmatch(rf"GET {re.escape(http_base)}/json → 200 in \d+ ms", text), text
    assert "hunter2-pw" not in logs(daemon, sid).text


def failed_line(daemon: DaemonProcess, sid: str, code: str) -> tuple[dict[str, Any], str]:
    """The failed run's view and the one line its http step kept, on stderr."""
    view = wait_terminal(daemon, sid)
    assert view["status"] == "failed" and view["errorCode"] == code, view
    [(step, stream, text)] = kept(daemon, sid)
    assert (step, stream) == (1, "stderr")
    return view, text


def test_an_http_step_that_gets_an_error_status_keeps_it_with_the_secret_in_its_url_redacted(
        daemon: DaemonProcess, http_base: str) -> None:
    sid = run(daemon, "call-secret", {"url": http_base})
    _, text = failed_line(daemon, sid, "http_status")
    assert re.fullmatch(rf"GET {re.escape(http_base)}/\*\*\* → 404 in \d+ ms", text), text
    assert SECRET not in logs(daemon, sid).text


def test_an_http_step_whose_request_fails_keeps_the_error(daemon: DaemonProcess) -> None:
    url = "http://127.0.0.1:9/nothing-listens-here"
    sid = run(daemon, "call", {"url": url})
    view, text = failed_line(daemon, sid, "http_error")
    assert re.fullmatch(rf"GET {re.escape(url)} failed after \d+ ms: ConnectError: .+", text), text
    # The same reason as the step's error.
    assert view["error"] == f"GET {url}: {text.split(': ', 1)[1]}"


def test_an_llm_steps_tool_calls_and_results_are_kept(tmp_path: Path) -> None:
    with agents_daemon(tmp_path) as (d, fake):
        fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})]),
                     Reply(tool_calls=[ToolCall("fail", {"message": "not today"})]),
                     Reply(text=["The sum is 5"]))
        r = httpx.post(f"{d.url}/api/workspaces/agents-ui/signals/ask?nowait=true", json={"payload": {}},
                       timeout=10)
        assert r.status_code == 202, r.text
        sid = r.json()["sessionId"]
        assert wait_terminal(d, sid)["status"] == "completed"
        tools = [(step, text) for step, stream, text in kept(d, sid) if stream == "tool"]
        assert [step for step, _ in tools] == [1, 1, 1, 1]
        texts = [text for _, text in tools]
        assert texts[0] == "call add on t" and texts[2] == "call fail on t", texts
        assert re.fullmatch(r"add ok \(\d+ ms\)", texts[1]), texts
        assert re.fullmatch(r"fail failed: .*not today.* \(\d+ ms\)", texts[3]), texts
