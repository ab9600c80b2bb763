"""`atlas sessions follow` shows tool calls (issue #14, item 7): each call as it starts and ends, from the live
`tool-call` / `tool-result` chunks, in the plain and the live (Rich) renderers; once the step ends, its recorded
`toolCalls` are what the final view shows, and a call the follower did not see live is printed from the record.

The unit tests feed the renderers the frames a daemon sends; the end-to-end tests run a real daemon with the
`tests/fixtures/agents_ui` workspace (an `llm` agent on the scripted model server, a real stdio MCP server).
`write_agents_workspace` and `agents_daemon` are shared with tests/test_ui_tools.py.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from atlas.cli.client import exit_code_for_status
from atlas.cli.follow import Lines, LiveTree, Tracker, fold_tool_chunk
from atlas.cli.render import Output, compact
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models

SID = "5a1e3c77-2b0d-4c1e-9f3a-0d4b6e8f1a2c"
# Long and unlike any other text: secret values are redacted wherever they appear in events, so a short key
# would mangle unrelated strings (a key "k" turns "call_fake_1" into "call_fa***e_1").
LLM_KEY = "atlas-test-llm-key-7c1d9e2f4a6b8c0d"
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


# ------------------------------------------------------------------------------------- shared with test_ui_tools


def write_agents_workspace(dest: Path, model_url: str) -> Path:
    """`dest/workspace.yml` from the agents_ui template: the model server's URL is only known at test time."""
    dest.mkdir(parents=True, exist_ok=True)
    template = string.Template((FIXTURES / "agents_ui" / "workspace.yml.template").read_text())
    (dest / "workspace.yml").write_text(template.substitute(model_url=model_url, python=sys.executable,
                                                            repo=str(ROOT)))
    return dest


@contextmanager
def agents_daemon(tmp: Path, *more: Path) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    """A real daemon with the agents_ui workspace (and `more` workspaces), and the scripted model server its
    `calc` agent talks to."""
    with fake_models() as fake:
        workspace = write_agents_workspace(tmp / "agents-ui", fake.openai_url)
        daemon = DaemonProcess(tmp / "home", [workspace, *more], env={"ATLAS_TEST_LLM_KEY": LLM_KEY}).start()
        try:
            yield daemon, fake
        finally:
            code = daemon.stop()
            assert code == 0, f"daemon exited with {code}:\n{daemon.log()}"


# ---------------------------------------------------------------------------------------------------- helpers


def event(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "sessionId": SID, "seq": seq, "timestamp": f"2026-12-04T10:00:0{seq}.000Z", **fields}


def chunk(body: dict[str, Any], step: int | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"sessionId": SID, "chunk": body}
    if step is not None:
        message["stepNumber"] = step
    return message


HEAD = [
    event(1, "session:queued", workspaceId="agents-ui", jobName="ask", signalId="ask", task="ask", trigger="http",
          correlationId=SID, rootSessionId=SID, depth=0, payload={},
          plannedSteps=[{"agentName": "calc", "stateId": "s", "task": "t", "actionType": "agent"}]),
    event(2, "session:start", workspaceId="agents-ui", jobName="ask", signalId="ask", task="ask",
          correlationId=SID, rootSessionId=SID, depth=0, runner="d"),
    event(3, "step:start", stepNumber=1, agentName="calc", stateId="s", actionType="agent", task="t",
          outputKey="calc"),
]
CALL = {"type": "tool-call", "toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "server": "t"}
RESULT = {"type": "tool-result", "toolCallId": "c1", "toolName": "add", "durationMs": 12, "result": "5",
          "server": "t"}
FAILED_CALL = {"type": "tool-call", "toolCallId": "c2", "toolName": "fail", "args": {"message": "no " * 60},
               "server": "t"}
FAILED = {"type": "tool-result", "toolCallId": "c2", "toolName": "fail", "durationMs": 3, "result": "Error: no",
          "error": "the tool said no", "server": "t"}
RECORDED = [
    {"toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "result": "5", "durationMs": 12, "server": "t"},
    {"toolCallId": "c2", "toolName": "fail", "args": {"message": "no " * 60}, "result": "Error: no",
     "durationMs": 3, "error": "the tool said no", "server": "t"},
    {"toolCallId": "c3", "toolName": "echo", "args": {"text": "late"}, "result": "late", "durationMs": 1,
     "server": "t"},
]
LONG_ARGS = '{"message":"' + "no " * 60  # the tight JSON of FAILED_CALL's arguments, up to where it is cut
COMPLETE = event(4, "step:complete", stepNumber=1, status="completed", durationMs=40, output="The sum is 5",
                 toolCalls=RECORDED)


def plain_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What a plain renderer printed, without the `HH:MM:SS.mmm  <short id>  ` prefix of each line."""
    out = capsys.readouterr().out.splitlines()
    prefix = re.compile(rf"^\d\d:\d\d:\d\d\.\d{{3}}  {SID[:8]}  agents-ui/ask  ")
    assert all(prefix.match(line) for line in out), out
    return [prefix.sub("", line) for line in out]


def screen(tree: LiveTree) -> str:
    console = Console(width=200, record=True, force_terminal=False, color_system=None)
    console.print(tree)
    return console.export_text()


def feed(tracker: Tracker, renderer: Lines | LiveTree, items: list[dict[str, Any]]) -> None:
    """What `follow_run` does with each frame: fold it into the tracker, then hand it to the renderer."""
    for item in items:
        if "seq" in item:
            tracker.apply(item)
            renderer.event(item)
        else:
            tracker.apply_chunk(item)
            renderer.chunk(item)


# ---------------------------------------------------------------------------------------------------- unit


def test_fold_tool_chunk_tracks_a_call_from_start_to_result() -> None:
    started = fold_tool_chunk([], CALL)
    assert started == [{"toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "server": "t",
                        "running": True}]
    done = fold_tool_chunk(started, RESULT)
    assert done == [{"toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "server": "t",
                     "durationMs": 12, "result": "5"}]
    assert started[0]["running"] is True  # a new list: the old one is untouched
    # A result whose call came before we attached is kept on its own; a repeated result changes nothing more.
    orphan = fold_tool_chunk(done, FAILED)
    assert orphan[1] == {"toolCallId": "c2", "toolName": "fail", "server": "t", "durationMs": 3,
                         "result": "Error: no", "error": "the tool said no"}
    assert fold_tool_chunk([], {"type": "text-delta", "delta": "x"}) == []


def test_plain_lines_print_each_call_as_it_happens_and_the_unseen_ones_from_the_record(
        capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tracker()
    lines = Lines(Output(), tracker)
    feed(tracker, lines, [*HEAD, chunk(CALL), chunk(RESULT), chunk(FAILED_CALL, step=None), chunk(FAILED), COMPLETE])
    printed = plain_lines(capsys)
    assert printed == [
        "queued",
        "started",
        "step 1 calc (agent) started",
        'step 1 → tool add {"a":2,"b":3} (server t)',
        "step 1 ← add 12ms: 5",
        f"→ tool fail {LONG_ARGS[:79]}… (server t)",  # the chunk had no stepNumber; arguments are cut
        "step 1 ← fail failed: the tool said no",
        # c3 was never seen live (chunks are best effort): the record prints it before the step's own line.
        'step 1 → tool echo {"text":"late"} (server t)',
        "step 1 ← echo 1ms: late",
        "step 1 calc completed in 40ms, 3 tool calls → The sum is 5",
    ]


def test_plain_lines_of_a_finished_run_come_from_the_record(capsys: pytest.CaptureFixture[str]) -> None:
    """Following a finished run replays durable events only, never chunks: every call comes from `toolCalls`."""
    tracker = Tracker()
    lines = Lines(Output(), tracker)
    feed(tracker, lines, [*HEAD, COMPLETE])
    printed = plain_lines(capsys)
    assert printed[3:] == [
        'step 1 → tool add {"a":2,"b":3} (server t)',
        "step 1 ← add 12ms: 5",
        f"step 1 → tool fail {LONG_ARGS[:79]}… (server t)",
        "step 1 ← fail failed: the tool said no",
        'step 1 → tool echo {"text":"late"} (server t)',
        "step 1 ← echo 1ms: late",
        "step 1 calc completed in 40ms, 3 tool calls → The sum is 5",
    ]


def test_live_tree_shows_running_calls_then_the_recorded_ones() -> None:
    tracker = Tracker()
    tree = LiveTree(Output(), tracker, "Following")
    feed(tracker, tree, [*HEAD, chunk(CALL)])
    assert 'tool add {"a":2,"b":3} · t  running…' in screen(tree)
    feed(tracker, tree, [chunk(RESULT), chunk(FAILED_CALL), chunk(FAILED)])
    text = screen(tree)
    assert 'tool add {"a":2,"b":3} · t  12ms: 5' in text
    assert "tool fail " in text and "· t  failed: the tool said no" in text
    assert "echo" not in text
    # step:complete: its toolCalls replace the live list (here the record also has a call we never saw live).
    done = dict(COMPLETE, toolCalls=[dict(RECORDED[0], durationMs=15), RECORDED[2]])
    feed(tracker, tree, [done])
    text = screen(tree)
    # (the header's own elapsed time may read "12ms" too: only the tool lines are checked for the live value)
    tool_lines = [line for line in text.splitlines() if "tool " in line]
    assert 'tool add {"a":2,"b":3} · t  15ms: 5' in text and not any("12ms" in line for line in tool_lines)
    assert 'tool echo {"text":"late"} · t  1ms: late' in text and "tool fail" not in text


def test_live_tree_keeps_the_live_calls_of_a_step_that_ended_without_a_record() -> None:
    tracker = Tracker()
    tree = LiveTree(Output(), tracker, "Following")
    cancelled = event(4, "session:complete", status="cancelled", error="cancelled by user",
                      errorCode="cancelled_by_user")
    feed(tracker, tree, [*HEAD, chunk(CALL), chunk(RESULT), chunk(FAILED_CALL), cancelled])
    text = screen(tree)
    assert 'tool add {"a":2,"b":3} · t  12ms: 5' in text
    assert "tool fail " in text and "no result (the step ended first)" in text and "running…" not in text


def test_live_tree_shows_only_the_last_calls_of_a_long_loop() -> None:
    tracker = Tracker()
    tree = LiveTree(Output(), tracker, "Following")
    calls = [chunk({"type": "tool-call", "toolCallId": f"c{i}", "toolName": f"t{i}", "args": {}}) for i in range(9)]
    feed(tracker, tree, [*HEAD, *calls])
    text = screen(tree)
    assert "… 3 earlier tool calls" in text
    assert "tool t2 " not in text and "tool t3 {}" in text and "tool t8 {}" in text


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    with agents_daemon(tmp_path_factory.mktemp("follow-tools")) as pair:
        yield pair


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    return {**env, "ATLAS_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}


def test_trigger_and_follow_print_the_tool_call(agents: tuple[DaemonProcess, FakeModels], tmp_path: Path) -> None:
    daemon, fake = agents
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), Reply(text=["The sum ", "is 5"]))
    env = cli_env(tmp_path)
    live = subprocess.run([ATLAS, "signal", "trigger", "ask", "-w", "agents-ui", "--url", daemon.url],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert live.returncode == 0, live.stdout + live.stderr
    sid = re.search(r"^sessionId\s+(\S+)$", live.stdout, re.M)
    assert sid, live.stdout

    def calls(stdout: str) -> list[str]:
        return [line.split(f"{sid.group(1)[:8]}  agents-ui/ask  ", 1)[1] for line in stdout.splitlines()
                if "step 1 →" in line or "step 1 ←" in line]

    # The call exactly once, whether the follower saw it live or from the record.
    printed = calls(live.stdout)
    assert len(printed) == 2 and printed[0] == 'step 1 → tool add {"a":2,"b":3} (server t)', live.stdout
    assert re.fullmatch(r"step 1 ← add \d+ms: 5", printed[1]), printed
    assert "calc completed in " in live.stdout and ", 1 tool call → The sum is 5" in live.stdout
    # Following it again once it ended: no chunks are replayed, the same lines come from step:complete.
    again = subprocess.run([ATLAS, "sessions", "follow", sid.group(1), "--url", daemon.url],
                           capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls(again.stdout) == calls(live.stdout)
    # --json prints durable events only, the step:complete with its toolCalls.
    as_json = subprocess.run([ATLAS, "sessions", "follow", sid.group(1), "--json", "--url", daemon.url],
                             capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    step = next(d for d in docs if d.get("type") == "step:complete")
    assert [(c["toolName"], c["args"], c["result"], c["server"]) for c in step["toolCalls"]] == \
        [("add", {"a": 2, "b": 3}, "5", "t")]


def test_follow_shows_a_running_tool_call(agents: tuple[DaemonProcess, FakeModels], tmp_path: Path) -> None:
    """Chunks are never replayed, so the follower must be attached before the call starts: the first tool
    (`rendezvous`) holds the step until the test has seen the follower print the step's start; the second one
    (`slow`) is then the call the follower must print live, while it runs."""
    daemon, fake = agents
    gate, opened, marker = tmp_path / "gate", tmp_path / "open", tmp_path / "m"
    fake.enqueue(Reply(tool_calls=[ToolCall("rendezvous", {"mine": str(gate), "other": str(opened)})]),
                 Reply(tool_calls=[ToolCall("slow", {"seconds": 30, "marker": str(marker)})]))
    accepted = httpx.post(f"{daemon.url}/api/workspaces/agents-ui/signals/ask?nowait=true", json={"payload": {}},
                          timeout=10)
    assert accepted.status_code == 202, accepted.text
    sid = accepted.json()["sessionId"]
    wait_for(gate.exists, timeout=30, what="the first tool to run")
    follower = subprocess.Popen([ATLAS, "sessions", "follow", sid, "--url", daemon.url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path), cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("step 1 calc (agent) started" in line for line in lines), timeout=30,
                 what="the follower to attach")
        opened.touch()
        wait_for(lambda: Path(f"{marker}.started").exists(), timeout=30, what="the slow tool to start")
        wait_for(lambda: any("→ tool slow" in line for line in lines), timeout=30, what="the running call")
        printed = [line.split(f"{sid[:8]}  agents-ui/ask  ", 1)[1].rstrip("\n") for line in lines if "step 1 " in line]
        assert re.fullmatch(r"step 1 ← rendezvous \d+(ms|\.\ds): met", printed[1]), printed
        args = compact({"seconds": 30, "marker": str(marker)}, 80, tight=True)  # a long path is cut
        assert printed[2] == f"step 1 → tool slow {args} (server t)", printed
    finally:
        httpx.delete(f"{daemon.url}/api/sessions/{sid}", timeout=10)
        follower.wait(timeout=60)
        reader.join(timeout=10)
    assert follower.returncode == exit_code_for_status("cancelled"), lines
    assert lines[-1].startswith("cancelled  agents-ui/ask"), lines
