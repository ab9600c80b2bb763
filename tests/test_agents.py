"""Agents (spec §2.5, §10.8): python, shell, http and the built-ins, run through `run_agent` for real.

Nothing of ours is mocked: python agents are real modules in a temporary workspace, shell agents are real
processes, and the http agent talks to a real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atlas.agents import shell
from atlas.agents.base import AgentContext, StepError
from atlas.agents.runner import run_agent
from atlas.config.model import AtlasAgent, HttpAgent, LlmAgent, PythonAgent, ShellAgent
from atlas.templating import Templater

PY = sys.executable
SESSION = {"id": "sess-1", "correlationId": "corr-1", "workspaceId": "ws-1", "depth": 0}


class Chunks:
    """A thread-safe sink that records chunks and lets a test await the first one matching a predicate."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Event]] = []

    def __call__(self, chunk: dict[str, Any]) -> None:
        self.items.append(chunk)
        self._loop.call_soon_threadsafe(self._notify, chunk)

    def _notify(self, chunk: dict[str, Any]) -> None:
        for predicate, event in self._waiters:
            if predicate(chunk):
                event.set()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> None:
        event = asyncio.Event()
        self._waiters.append((predicate, event))
        if any(predicate(chunk) for chunk in list(self.items)):
            event.set()
        await asyncio.wait_for(event.wait(), timeout)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [chunk for chunk in self.items if chunk["type"] == kind]


@pytest.fixture
async def chunks() -> Chunks:
    return Chunks()


@pytest.fixture
def templater() -> Templater:
    return Templater()


def make_ctx(workspace: Path, chunks: Chunks, input_value: Any = None, **extra: Any) -> AgentContext:
    return AgentContext(
        workspace_dir=workspace,
        input=input_value,
        payload=extra.pop("payload", input_value),
        signal={"id": "go", "provider": "http", "workspaceId": "ws-1"},
        session=dict(SESSION),
        results=extra.pop("results", {}),
        _progress_sink=chunks,
        **extra,
    )


def variables(ctx: AgentContext) -> dict[str, Any]:
    return {
        "payload": ctx.payload,
        "results": ctx.results,
        "signal": ctx.signal,
        "session": ctx.session,
        "input": ctx.input,
    }


async def run(agent: Any, ctx: AgentContext, templater: Templater) -> Any:
    return await run_agent(agent, ctx, templater, variables(ctx))


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (orphans may stay unreaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def assert_gone(pids: list[int], deadline_s: float = 10) -> None:
    deadline = time.monotonic() + deadline_s
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes still alive: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- python


def write_module(workspace: Path, source: str) -> str:
    """A uniquely named module: sys.modules is process-wide, and every test has its own workspace."""
    name = f"steps_{uuid.uuid4().hex}"
    (workspace / f"{name}.py").write_text(source)
    return name


def python_agent(module: str, function: str, params: dict[str, Any] | None = None) -> PythonAgent:
    return PythonAgent.model_validate(
        {"type": "python", "config": {"entrypoint": f"{module}:{function}", "params": params or {}}}
    )


@pytest.mark.both_loops
async def test_python_sync_runs_in_a_thread_and_streams_progress(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    module = write_module(
        tmp_path,
        "import threading\n"
        "def step(ctx):\n"
        "    ctx.emit_progress('half', current=1, total=2, data={'k': 1})\n"
        "    return {'n': ctx.input['n'] * 2, 'p': ctx.params['p'],\n"
        "            'thread': threading.current_thread().name,\n"
        "            'session': ctx.session['id'], 'earlier': ctx.results['a']}\n",
    )
    ctx = make_ctx(tmp_path, chunks, {"n": 21}, results={"a": 1})
    output = await run(python_agent(module, "step", {"p": "q"}), ctx, templater)
    assert output["n"] == 42
    assert output["p"] == "q"
    assert output["session"] == "sess-1"
    assert output["earlier"] == 1
    assert output["thread"] != threading.current_thread().name
    assert chunks.of_type("progress") == [
        {"type": "progress", "message": "half", "current": 1, "total": 2, "data": {"k": 1}}
    ]


async def test_python_async_function_is_awaited(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    module = write_module(
        tmp_path,
        "import asyncio\n"
        "async def step(ctx):\n"
        "    await asyncio.sleep(0)\n"
        "    ctx.emit_progress('stamping')\n"
        "    return {'counted': ctx.input['counted'], 'loud': ctx.payload.get('loud', False)}\n",
    )
    ctx = make_ctx(tmp_path, chunks, {"counted": 5})
    assert await run(python_agent(module, "step"), ctx, templater) == {"counted": 5, "loud": False}
    assert chunks.of_type("progress") == [{"type": "progress", "message": "stamping"}]


async def test_python_results_are_read_only(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    module = write_module(tmp_path, "def step(ctx):\n    ctx.results['a'] = 2\n")
    with pytest.raises(StepError) as info:
        await run(python_agent(module, "step"), make_ctx(tmp_path, chunks, results={"a": 1}), templater)
    assert info.value.code == "agent_error"
    assert "TypeError" in info.value.message


@pytest.mark.parametrize("value", ["{1, 2}", "object()", "float('nan')"])
async def test_python_non_json_output_is_invalid_output(
    tmp_path: Path, chunks: Chunks, templater: Templater, value: str
) -> None:
    module = write_module(tmp_path, f"def step(ctx):\n    return {{'v': {value}}}\n")
    with pytest.raises(StepError) as info:
        await run(python_agent(module, "step"), make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "invalid_output"


async def test_python_exception_is_agent_error(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    module = write_module(tmp_path, "async def step(ctx):\n    raise ValueError('boom')\n")
    with pytest.raises(StepError) as info:
        await run(python_agent(module, "step"), make_ctx(tmp_path, chunks), templater)
    assert (info.value.code, info.value.message) == ("agent_error", "ValueError: boom")


async def test_python_missing_entrypoint_is_agent_error(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    module = write_module(tmp_path, "def other(ctx):\n    return 1\n")
    for agent in (python_agent(module, "step"), python_agent(f"{module}_absent", "step")):
        with pytest.raises(StepError) as info:
            await run(agent, make_ctx(tmp_path, chunks), templater)
        assert info.value.code == "agent_error"


@pytest.mark.both_loops
async def test_python_sync_cancellation_sets_ctx_cancelled(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    module = write_module(
        tmp_path,
        "def step(ctx):\n"
        "    ctx.emit_progress('waiting')\n"
        "    return {'stopped': ctx.cancelled.wait(timeout=30)}\n",
    )
    ctx = make_ctx(tmp_path, chunks)
    task = asyncio.create_task(run(python_agent(module, "step"), ctx, templater))
    await chunks.wait_for(lambda chunk: chunk.get("message") == "waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled.is_set()


@pytest.mark.both_loops
async def test_python_async_cancellation_sets_ctx_cancelled(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    module = write_module(
        tmp_path,
        "import asyncio\n"
        "async def step(ctx):\n"
        "    ctx.emit_progress('waiting')\n"
        "    await asyncio.Event().wait()\n",
    )
    ctx = make_ctx(tmp_path, chunks)
    task = asyncio.create_task(run(python_agent(module, "step"), ctx, templater))
    await chunks.wait_for(lambda chunk: chunk.get("message") == "waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled.is_set()


# ---------------------------------------------------------------- shell


def shell_agent(command: list[str], **config: Any) -> ShellAgent:
    return ShellAgent.model_validate({"type": "shell", "config": {"command": command, **config}})


PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"
NASTY = "\"; rm -rf / $(whoami) `id` | cat > /tmp/x && echo 'pwned' \\ \n $HOME *"


@pytest.mark.both_loops
async def test_shell_metacharacters_reach_the_process_as_one_literal_argument(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", PRINT_ARGV, "{{ payload.s }}", "{{ results.x.n }}", "n={{ payload.n }}"])
    ctx = make_ctx(tmp_path, chunks, {"s": NASTY, "n": 2}, results={"x": {"n": 7}})
    output = await run(agent, ctx, templater)
    assert output["exitCode"] == 0
    assert json.loads(output["stdout"]) == [NASTY, "7", "n=2"]
    assert "truncated" not in output


@pytest.mark.both_loops
async def test_shell_input_arrives_on_stdin_as_json(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", "import sys; sys.stdout.write(sys.stdin.read())"])
    ctx = make_ctx(tmp_path, chunks, {"a": [1, "two"], "b": None})
    output = await run(agent, ctx, templater)
    assert json.loads(output["stdout"]) == {"a": [1, "two"], "b": None}

    no_stdin = shell_agent([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], stdin="none")
    assert (await run(no_stdin, ctx, templater))["stdout"] == "''\n"


@pytest.mark.both_loops
async def test_shell_non_zero_exit_is_exit_status_with_output(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    script = "import sys; print('out line'); print('err line', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StepError) as info:
        await run(shell_agent([PY, "-c", script]), make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "exit_status"
    assert info.value.output == {"exitCode": 3, "stdout": "out line\n", "stderr": "err line\n"}
    logs = chunks.of_type("log")
    assert {"type": "log", "stream": "stdout", "line": "out line"} in logs
    assert {"type": "log", "stream": "stderr", "line": "err line"} in logs


@pytest.mark.both_loops
async def test_shell_streams_are_capped(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    script = "import sys; sys.stdout.write('x' * (2 * 1024 * 1024)); print(); print('tail')"
    output = await run(shell_agent([PY, "-c", script]), make_ctx(tmp_path, chunks), templater)
    assert output["truncated"] is True
    assert len(output["stdout"]) == shell.MAX_STREAM_BYTES
    lines = [chunk["line"] for chunk in chunks.of_type("log")]
    assert lines[-1] == "tail"
    assert all(len(line) <= 8 * 1024 + 1 for line in lines)


def parse_env(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.mark.both_loops
async def test_shell_environment_is_isolated(
    tmp_path: Path, chunks: Chunks, templater: Templater, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_TOKEN", "t" * 40)
    monkeypatch.setenv("ATLAS_TEST_OTHER", "leak")
    env_binary = shutil.which("env")
    assert env_binary is not None
    agent = shell_agent([env_binary], env={"GREETING": "hi {{ payload.name }}", "N": "{{ payload.n }}"})
    ctx = make_ctx(tmp_path, chunks, {"name": "ada", "n": 4})
    env = parse_env((await run(agent, ctx, templater))["stdout"])
    allowed = {"PATH", "HOME", "LANG", "TZ", "GREETING", "N"} | {
        "ATLAS_SESSION_ID",
        "ATLAS_CORRELATION_ID",
        "ATLAS_WORKSPACE_ID",
    }
    assert set(env) <= allowed
    assert env["GREETING"] == "hi ada"
    assert env["N"] == "4"
    assert (env["ATLAS_SESSION_ID"], env["ATLAS_CORRELATION_ID"], env["ATLAS_WORKSPACE_ID"]) == (
        "sess-1",
        "corr-1",
        "ws-1",
    )

    inherited = shell_agent([env_binary], inherit_env=True, env={"ATLAS_TOKEN": "sneaky"})
    env = parse_env((await run(inherited, ctx, templater))["stdout"])
    assert env["ATLAS_TEST_OTHER"] == "leak"
    assert "ATLAS_TOKEN" not in env


def same_path(printed: str, expected: Path) -> bool:
    return Path(printed).resolve() == expected.resolve()


@pytest.mark.both_loops
async def test_shell_cwd_is_relative_to_the_workspace(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    (tmp_path / "sub").mkdir()
    script = "import os; print(os.getcwd())"
    output = await run(shell_agent([PY, "-c", script], cwd="sub"), make_ctx(tmp_path, chunks), templater)
    assert same_path(output["stdout"].strip(), tmp_path / "sub")
    output = await run(shell_agent([PY, "-c", script]), make_ctx(tmp_path, chunks), templater)
    assert same_path(output["stdout"].strip(), tmp_path)


@pytest.mark.both_loops
async def test_shell_unknown_program_is_agent_error(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    with pytest.raises(StepError) as info:
        await run(shell_agent([str(tmp_path / "no-such-program")]), make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "agent_error"


@pytest.mark.both_loops
async def test_shell_template_error_is_template_error(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", "pass", "{{ ''.__class__.__mro__ }}"])
    with pytest.raises(StepError) as info:
        await run(agent, make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "template_error"


# A process that starts a grandchild in its group, records both pids, says "ready" and waits.
SPAWN_AND_WAIT = (
    "import subprocess, sys, os, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def read_pids(workspace: Path) -> list[int]:
    return [int(pid) for pid in (workspace / "pids").read_text().split()]


@pytest.mark.both_loops
async def test_shell_timeout_kills_the_process_group(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = shell_agent([PY, "-c", SPAWN_AND_WAIT], timeout="1s")
    started = time.monotonic()
    with pytest.raises(StepError) as info:
        await run(agent, make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 5
    assert info.value.output["stdout"] == "ready\n"
    await assert_gone(read_pids(tmp_path))


@pytest.mark.both_loops
async def test_shell_cancellation_kills_the_process_group(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    task = asyncio.create_task(
        run(shell_agent([PY, "-c", SPAWN_AND_WAIT]), make_ctx(tmp_path, chunks), templater)
    )
    await chunks.wait_for(lambda chunk: chunk.get("line") == "ready")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_gone(read_pids(tmp_path))


@pytest.mark.both_loops
async def test_shell_sigterm_ignored_then_sigkilled(
    tmp_path: Path, chunks: Chunks, templater: Templater, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "KILL_GRACE_SECONDS", 0.2)
    script = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SPAWN_AND_WAIT
    task = asyncio.create_task(run(shell_agent([PY, "-c", script]), make_ctx(tmp_path, chunks), templater))
    await chunks.wait_for(lambda chunk: chunk.get("line") == "ready")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_gone(read_pids(tmp_path))


# ---------------------------------------------------------------- http


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/json":
            self._send(200, b'{"ok": true, "n": 1}', "application/json; charset=utf-8")
        elif self.path == "/text":
            self._send(200, b"hello", "text/plain")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        received = json.loads(self.rfile.read(length)) if length else None
        answer = {"path": self.path, "json": received, "x-test": self.headers.get("X-Test")}
        self._send(201, json.dumps(answer).encode(), "application/vnd.api+json")


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def http_agent(**config: Any) -> HttpAgent:
    return HttpAgent.model_validate({"type": "http", "config": config})


async def test_http_json_response_is_parsed(
    tmp_path: Path, chunks: Chunks, templater: Templater, http_base: str
) -> None:
    output = await run(
        http_agent(method="GET", url=f"{http_base}/json"), make_ctx(tmp_path, chunks), templater
    )
    assert output["status"] == 200
    assert output["body"] == {"ok": True, "n": 1}
    assert output["headers"]["content-type"].startswith("application/json")


async def test_http_templated_post(
    tmp_path: Path, chunks: Chunks, templater: Templater, http_base: str
) -> None:
    agent = http_agent(
        url=http_base + "/items/{{ payload.id }}",
        headers={"X-Test": "v{{ payload.id }}"},
        json={"count": "{{ payload.n }}", "name": "n-{{ payload.n }}"},
    )
    output = await run(agent, make_ctx(tmp_path, chunks, {"id": 7, "n": 3}), templater)
    assert output["status"] == 201
    assert output["body"] == {"path": "/items/7", "json": {"count": 3, "name": "n-3"}, "x-test": "v7"}


async def test_http_text_response(
    tmp_path: Path, chunks: Chunks, templater: Templater, http_base: str
) -> None:
    output = await run(
        http_agent(method="GET", url=f"{http_base}/text"), make_ctx(tmp_path, chunks), templater
    )
    assert output["body"] == "hello"


async def test_http_404_is_http_status(
    tmp_path: Path, chunks: Chunks, templater: Templater, http_base: str
) -> None:
    agent = http_agent(method="GET", url=f"{http_base}/missing")
    with pytest.raises(StepError) as info:
        await run(agent, make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "http_status"
    assert info.value.output["status"] == 404
    assert info.value.output["body"] == {"error": "not found"}

    lenient = http_agent(method="GET", url=f"{http_base}/missing", fail_on_status=False)
    assert (await run(lenient, make_ctx(tmp_path, chunks), templater))["status"] == 404


async def test_http_connection_refused_is_http_error(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StepError) as info:
        await run(http_agent(url=f"http://127.0.0.1:{port}/"), make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "http_error"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "/relative", "{{ 5 }}"])
async def test_http_only_http_urls(tmp_path: Path, chunks: Chunks, templater: Templater, url: str) -> None:
    with pytest.raises(StepError) as info:
        await run(http_agent(url=url), make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "http_error"


# ---------------------------------------------------------------- built-ins


@pytest.mark.both_loops
async def test_count_emits_progress_and_outputs_counted(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    output = await run("atlas/count", make_ctx(tmp_path, chunks, {"count": 3, "interval": 0}), templater)
    assert output == {"counted": 3}
    assert chunks.of_type("progress") == [
        {"type": "progress", "message": f"{i}/3", "current": i, "total": 3} for i in (1, 2, 3)
    ]


async def test_count_config_is_overridden_by_input_keys(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    agent = AtlasAgent.model_validate(
        {"type": "atlas", "agent": "atlas/count", "config": {"count": 2, "interval": "1h"}}
    )
    ctx = make_ctx(tmp_path, chunks, {"interval": "1ms", "loud": True})
    assert await run(agent, ctx, templater) == {"counted": 2}
    assert [chunk["current"] for chunk in chunks.of_type("progress")] == [1, 2]


@pytest.mark.both_loops
async def test_count_is_cancellable(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    # wait_for cancels the agent inside its first hour-long sleep and waits for it to finish.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            run("atlas/count", make_ctx(tmp_path, chunks, {"interval": "1h"}), templater), timeout=0.05
        )
    assert chunks.of_type("progress") == []


async def test_count_rejects_bad_config(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    for bad in (
        {"count": "many"},
        {"count": -1},
        {"count": 1, "interval": "soon"},
        {"count": 1, "interval": -1},
    ):
        with pytest.raises(StepError) as info:
            await run("atlas/count", make_ctx(tmp_path, chunks, bad), templater)
        assert info.value.code == "agent_error"


async def test_sleep_outputs_slept_ms(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    agent = AtlasAgent.model_validate(
        {"type": "atlas", "agent": "atlas/sleep", "config": {"duration": "20ms"}}
    )
    assert await run(agent, make_ctx(tmp_path, chunks), templater) == {"sleptMs": 20}
    assert await run(agent, make_ctx(tmp_path, chunks, {"duration": "5ms"}), templater) == {"sleptMs": 5}
    assert await run("atlas/sleep", make_ctx(tmp_path, chunks, {"duration": 0.01}), templater) == {
        "sleptMs": 10
    }


async def test_echo_outputs_its_input(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    value = {"a": [1, 2], "b": "c"}
    assert await run("atlas/echo", make_ctx(tmp_path, chunks, value), templater) == value
    agent = AtlasAgent.model_validate({"type": "atlas", "agent": "atlas/echo"})
    assert await run(agent, make_ctx(tmp_path, chunks, "plain"), templater) == "plain"


# ---------------------------------------------------------------- runner


async def test_unknown_builtin_and_llm_fail_cleanly(
    tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    with pytest.raises(StepError) as info:
        await run("atlas/nope", make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "agent_error"
    llm = LlmAgent.model_validate({"type": "llm", "config": {"model": "m", "prompt": "hi"}})
    with pytest.raises(StepError) as info:
        await run(llm, make_ctx(tmp_path, chunks), templater)
    assert info.value.code == "llm_error"


def test_context_results_are_read_only(tmp_path: Path) -> None:
    ctx = AgentContext(workspace_dir=tmp_path, results={"a": 1})
    with pytest.raises(TypeError):
        ctx.results["a"] = 2  # type: ignore[index]
    ctx.emit_progress("no sink, no error")
