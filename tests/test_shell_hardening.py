"""Shell agents under both event loops (issue #19, bugs 4 and 10): the daemon runs on uvloop, whose subprocess
transports behave differently from the standard loop's in the two places tested here.

Bug 4: when a command exits without reading its stdin, uvloop raised `RuntimeError` (handler closed) from the stdin
write, which failed a step whose command had succeeded. Bug 10: uvloop passed an argv element or an env value with
a NUL to exec(), which cut it at the NUL (`/data/../../etc/passwd\\0.csv` ran as `/data/../../etc/passwd`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atlas.agents.base import MAX_LOG_LINE_CHARS, StepError
from atlas.templating import Templater
from tests.test_agents import PY, Chunks, chunks, make_ctx, run, shell_agent, templater

__all__ = ["chunks", "templater"]  # the fixtures of tests/test_agents.py, shared

pytestmark = pytest.mark.both_loops

#: ~200 KB of JSON on stdin: far more than a pipe buffer, so the write is still going when `printf` exits.
BIG_INPUT = {"blob": "x" * 200_000}
RUNS = 40


async def test_a_command_that_ignores_a_large_stdin_always_succeeds(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    printf = shutil.which("printf")
    assert printf is not None
    agent = shell_agent([printf, "ok"], stdin="input")
    failures: list[str] = []
    for _ in range(RUNS):
        try:
            output = await run(agent, make_ctx(tmp_path, chunks, BIG_INPUT), templater)
        except StepError as exc:
            failures.append(f"{exc.code}: {exc.message}")
            continue
        except RuntimeError as exc:  # what uvloop raised from the stdin write before the fix
            failures.append(f"RuntimeError: {exc}")
            continue
        assert output == {"exitCode": 0, "stdout": "ok", "stderr": ""}
    assert failures == []


async def test_a_command_that_reads_part_of_its_stdin_still_gets_it(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", "import sys; print(len(sys.stdin.read(10)))"], stdin="input")
    output = await run(agent, make_ctx(tmp_path, chunks, BIG_INPUT), templater)
    assert output["exitCode"] == 0 and output["stdout"] == "10\n"


MARK_RAN = "import sys, pathlib; pathlib.Path('ran').write_text(repr(sys.argv[1:]))"


async def test_a_nul_in_a_rendered_argument_is_refused(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", MARK_RAN, "/data/{{ payload.name }}.csv"])
    ctx = make_ctx(tmp_path, chunks, {"name": "../../etc/passwd\u0000"})
    with pytest.raises(StepError) as info:
        await run(agent, ctx, templater)
    assert info.value.code == "agent_error"
    assert "NUL" in info.value.message and "command[3]" in info.value.message
    assert "passwd" not in info.value.message  # payload data (maybe a secret) is not echoed back
    assert not (tmp_path / "ran").exists()


async def test_a_nul_in_a_rendered_env_value_is_refused(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", MARK_RAN], env={"TARGET": "{{ payload.name }}"})
    ctx = make_ctx(tmp_path, chunks, {"name": "a\u0000b"})
    with pytest.raises(StepError) as info:
        await run(agent, ctx, templater)
    assert info.value.code == "agent_error"
    assert "NUL" in info.value.message and "TARGET" in info.value.message
    assert not (tmp_path / "ran").exists()


async def test_a_non_string_value_with_a_nul_runs_as_json(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    """A list or dict becomes JSON, where a NUL is escaped as `\\u0000`: that is text, not a NUL, so it runs."""
    agent = shell_agent([PY, "-c", MARK_RAN, "{{ payload.items }}"])
    output = await run(agent, make_ctx(tmp_path, chunks, {"items": ["a\u0000b"]}), templater)
    assert output["exitCode"] == 0
    assert (tmp_path / "ran").exists()


# Lines of every awkward kind, repeated across many 64 KiB reads: CRLF ends, multi-byte characters, lines longer
# than a read, empty lines, and a last line without a newline.
AWKWARD = (
    "import sys\n"
    "out = sys.stdout.buffer\n"
    "for i in range(300):\n"
    "    out.write(b'plain %d\\n' % i + b'crlf\\r\\n' + 'é€'.encode() * 50 + b'\\n' + b'x' * 70000 + b'\\n\\n')\n"
    "out.write(b'tail')\n"
)


async def test_output_lines_reach_the_sink_whole_whatever_the_reads(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    """Lines go to the sink a block at a time (bug 1); joined, they are exactly the lines printed, trimmed as before."""
    await run(shell_agent([PY, "-c", AWKWARD]), make_ctx(tmp_path, chunks), templater)
    lines = [line for chunk in chunks.of_type("log") for line in chunk["line"].split("\n")]
    expected: list[str] = []
    for i in range(300):
        expected += [f"plain {i}", "crlf", "é€" * 50, "x" * MAX_LOG_LINE_CHARS + "…", ""]
    assert lines == [*expected, "tail"]
    assert all(chunk["stream"] == "stdout" for chunk in chunks.of_type("log"))
