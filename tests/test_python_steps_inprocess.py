"""Python steps off the caller's loop, their captured output and their reload (issue #16, item 3), in process.

`run_python` is called for real on real modules written to a temporary workspace; the end-to-end checks with a
daemon are in test_python_isolation.py. Deadlock-free by construction: a step that waits for the caller's loop
waits with a bound, and says whether the loop answered.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from atlas.agents.base import AgentContext, StepError
from atlas.agents.python_agent import forget_workspace_code, run_python
from atlas.config.model import PythonAgentConfig


class Sink:
    """A thread-safe chunk sink, like the runtime's."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, chunk: dict[str, Any]) -> None:
        with self._lock:
            self.chunks.append(chunk)

    def lines(self) -> list[tuple[str, str]]:
        return [(c["stream"], line) for c in self.chunks if c["type"] == "log" for line in c["line"].split("\n")]


def module(workspace: Path, source: str) -> str:
    name = f"inproc_steps_{uuid.uuid4().hex}"  # sys.modules is the process's: one module per test
    (workspace / f"{name}.py").write_text(source)
    return name


async def call(workspace: Path, entrypoint: str, sink: Sink | None = None, **ctx: Any) -> Any:
    context = AgentContext(workspace_dir=workspace, _progress_sink=sink or Sink(), **ctx)
    return await run_python(PythonAgentConfig(entrypoint=entrypoint), context)


@pytest.mark.both_loops
async def test_a_blocking_async_step_leaves_the_callers_loop_running(tmp_path: Path) -> None:
    name = module(tmp_path, (
        "import time\n"
        "async def step(ctx):\n"
        "    ctx.payload['started'].set()\n"
        "    return {'loop answered': ctx.payload['answered'].wait(timeout=30)}  # blocks its thread\n"
    ))
    started, answered = threading.Event(), threading.Event()
    task = asyncio.create_task(call(tmp_path, f"{name}:step", payload={"started": started, "answered": answered}))
    while not started.is_set():  # this loop runs while the step blocks: it is not on it
        await asyncio.sleep(0.005)
    answered.set()
    assert await task == {"loop answered": True}


async def test_print_and_logging_inside_a_step_go_to_its_output_and_nowhere_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(tmp_path, (
        "import logging, sys, asyncio\n"
        "async def step(ctx):\n"
        "    print('one'); print('two', file=sys.stderr)\n"
        "    await asyncio.to_thread(print, 'from to_thread')\n"
        "    logging.getLogger('user.mod').error('broke %s', 'it')\n"
        "    logging.getLogger('atlas.engine').error('a daemon record')\n"
        "    sys.stdout.write('no newline at the end')\n"
        "    return 1\n"
    ))
    sink = Sink()
    assert await call(tmp_path, f"{name}:step", sink) == 1
    print("outside any step")
    assert sink.lines() == [
        ("stdout", "one"), ("stderr", "two"), ("stdout", "from to_thread"),
        ("stderr", "ERROR user.mod: broke it"), ("stdout", "no newline at the end"),
    ]
    out, err = capsys.readouterr()
    assert "outside any step" in out
    assert "one" not in out and "two" not in err and "broke" not in err


async def test_a_step_that_raises_cancelled_error_itself_fails(tmp_path: Path) -> None:
    name = module(tmp_path, "import asyncio\nasync def step(ctx):\n    raise asyncio.CancelledError()\n")
    with pytest.raises(StepError) as info:
        await call(tmp_path, f"{name}:step")
    assert info.value.code == "agent_error"
    assert info.value.details is not None and info.value.details["type"] == "asyncio.exceptions.CancelledError"


async def test_sys_exit_in_a_step_is_its_failure(tmp_path: Path) -> None:
    name = module(tmp_path, "import sys\ndef step(ctx):\n    sys.exit(3)\n")
    with pytest.raises(StepError) as info:
        await call(tmp_path, f"{name}:step")
    assert (info.value.code, info.value.message) == ("agent_error", "SystemExit: 3")


async def test_forgetting_a_workspaces_code_imports_it_afresh(tmp_path: Path) -> None:
    helper = f"inproc_helper_{uuid.uuid4().hex}"
    (tmp_path / f"{helper}.py").write_text("VALUE = 1\n")
    name = module(tmp_path, f"import {helper}\ndef step(ctx):\n    return {helper}.VALUE\n")
    assert await call(tmp_path, f"{name}:step") == 1
    (tmp_path / f"{helper}.py").write_text("VALUE = 2  # changed\n")
    (tmp_path / f"{name}.py").write_text(f"import {helper}\ndef step(ctx):\n    return {helper}.VALUE\n"
                                         "def added(ctx):\n    return 'new'\n")
    assert await call(tmp_path, f"{name}:step") == 1  # cached until the workspace is reloaded
    assert await asyncio.to_thread(forget_workspace_code, tmp_path) == 2  # the step module and its helper
    assert name not in sys.modules and helper not in sys.modules
    assert await call(tmp_path, f"{name}:step") == 2
    assert await call(tmp_path, f"{name}:added") == "new"


def test_the_daemons_handlers_leave_a_steps_records_alone(tmp_path: Path) -> None:
    """A handler added to the root logger after steps ran (by a library, or the daemon) gets the filter too."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        name = module(tmp_path, "import logging\ndef step(ctx):\n    logging.getLogger('u').warning('inside')\n")
        asyncio.run(call(tmp_path, f"{name}:step"))
        logging.getLogger("u").warning("outside")
    finally:
        root.removeHandler(handler)
    assert records == ["outside"]
