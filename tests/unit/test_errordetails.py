"""The bounds and the trimming of `errorDetails` and `cause` (issue #16), on plain values: a traceback keeps its head
and its innermost frames when cut, the daemon's leading frames go and the user's stay, a stderr tail is the end of the
stream and says when it is not all of it, and a cause chain is cut at MAX_CAUSE_DEPTH levels."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from atlas.agents.base import AgentContext, StepError
from atlas.agents.errordetails import (
    MAX_TRACEBACK_CHARS,
    TAIL_CUT_MARKER,
    cut_middle,
    exception_type,
    python_details,
    shell_details,
    tail_lines,
)
from atlas.agents.python_agent import run_python
from atlas.config.model import PythonAgentConfig
from atlas.sessions.causes import MAX_CAUSE_DEPTH, cause_from_view


def test_cut_middle_keeps_both_ends_and_says_how_much_went() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut = cut_middle(text, 1000)
    assert cut.startswith("HEAD") and cut.endswith("TAIL")
    assert f"[cut: {len(text) - 1000} characters]" in cut
    assert cut_middle("short", 1000) == "short"


def test_tail_lines_keeps_the_last_lines_after_a_marker() -> None:
    text = "".join(f"line {i}\n" for i in range(1, 31))
    assert tail_lines(text, max_lines=3) == f"{TAIL_CUT_MARKER}\nline 28\nline 29\nline 30"
    assert tail_lines("a\r\nb\n") == "a\nb"
    # The end of a longer stream: its first (partial) line goes and the marker says so.
    assert tail_lines("tial line\nlast\n", cut_before=True) == f"{TAIL_CUT_MARKER}\nlast"
    assert tail_lines("y" * 10_000, max_chars=100) == f"{TAIL_CUT_MARKER}\n" + "y" * 100


def test_shell_details_leave_out_an_empty_stderr() -> None:
    assert shell_details("command exited with status 1", "\n", exit_code=1) == {
        "type": "ShellError", "message": "command exited with status 1", "exitCode": 1}


STEPS = """\
class LoadError(Exception):
    pass


def _parse(row):
    raise LoadError(f"bad row {row}")


def load(ctx):
    return _parse(3)


async def load_async(ctx):
    return _parse(4)
"""


async def _failure(tmp_path: Path, module: str, function: str) -> StepError:
    (tmp_path / f"{module}.py").write_text(STEPS)
    config = PythonAgentConfig(entrypoint=f"{module}:{function}")
    with pytest.raises(StepError) as caught:
        await run_python(config, AgentContext(workspace_dir=tmp_path))
    return caught.value


@pytest.mark.parametrize("function", ["load", "load_async"])
def test_the_daemons_leading_frames_are_trimmed_and_the_users_kept(tmp_path: Path, function: str) -> None:
    module = f"errordetails_unit_{function}"  # one module per test: sys.modules is the process's
    err = asyncio.run(_failure(tmp_path, module, function))
    assert err.code == "agent_error" and err.details is not None
    assert err.details["type"] == f"{module}.LoadError"
    traceback = err.details["traceback"]
    frames = re.findall(r'^  File "([^"]+)", line (\d+), in (\w+)$', traceback, re.MULTILINE)
    path = str(tmp_path.resolve() / f"{module}.py")
    # Only the step's frames: how the python agent, asyncio and the thread pool called it is trimmed.
    assert frames == [(path, "10" if function == "load" else "14", function), (path, "6", "_parse")], traceback
    assert traceback.endswith(f"{module}.LoadError: bad row {3 if function == 'load' else 4}")


def test_a_step_module_that_does_not_compile_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "errordetails_unit_broken.py").write_text("x = 1\ndef f(:\n")
    config = PythonAgentConfig(entrypoint="errordetails_unit_broken:f")
    with pytest.raises(StepError) as caught:
        asyncio.run(run_python(config, AgentContext(workspace_dir=tmp_path)))
    details = caught.value.details
    assert caught.value.message.startswith("cannot load errordetails_unit_broken:f: SyntaxError")
    assert details is not None and details["type"] == "SyntaxError"
    assert f'File "{tmp_path.resolve() / "errordetails_unit_broken.py"}", line 2' in details["traceback"]
    assert "importlib" not in details["traceback"] and "atlas/agents" not in details["traceback"], details["traceback"]


def test_a_huge_traceback_is_bounded() -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("x" * 50_000)
        deep(n - 1)

    try:
        deep(200)
    except ValueError as exc:
        details = python_details(exc)
    assert len(details["traceback"]) < MAX_TRACEBACK_CHARS + 100
    assert "[cut:" in details["traceback"] and len(details["message"]) < 5000
    assert exception_type(KeyError()) == "KeyError"


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text("x = 1\ndef f(:\n")
    try:
        compile(source.read_text(), str(source), "exec")
    except SyntaxError as exc:
        details = python_details(exc)
    assert f'File "{source}", line 2' in details["traceback"] and details["type"] == "SyntaxError"


def _view(sid: str, inner: dict[str, Any] | None) -> dict[str, Any]:
    block: dict[str, Any] = {"stepNumber": 1, "agentName": "a", "status": "failed", "error": "e", "errorCode": "c"}
    if inner is not None:
        block["cause"] = inner
    return {"sessionId": sid, "workspaceId": "w", "jobName": "j", "status": "failed", "error": "e",
            "errorCode": "c", "agentBlocks": [{"status": "completed", "agentName": "z"}, block]}


def test_a_cause_chain_is_cut_at_its_depth_limit() -> None:
    cause = cause_from_view(_view("s0", None))
    assert cause == {"sessionId": "s0", "workspaceId": "w", "jobName": "j", "status": "failed", "error": "e",
                     "errorCode": "c", "stepNumber": 1, "agentName": "a"}
    for i in range(1, 20):  # each level wraps the cause of the one below, as a real cascade does
        cause = cause_from_view(_view(f"s{i}", cause))
    depth = 0
    level: Any = cause
    while level is not None:
        depth += 1
        level = level.get("cause")
    assert depth == MAX_CAUSE_DEPTH and cause["sessionId"] == "s19"
