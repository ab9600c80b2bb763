"""Real MCP servers, written with the official `mcp` SDK, that tests start as child processes.

Helpers to start `tools_server`: `tools_server_argv` (the command line, e.g. for a workspace's
`transport: {type: stdio, command, args}`), `stdio_params` (for `mcp.Client`), and `http_tools_server` /
`async_http_tools_server`, which run it over streamable HTTP and yield its `/mcp` URL.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from mcp.client.stdio import StdioServerParameters

__all__ = ["REPO", "async_http_tools_server", "http_tools_server", "stdio_params", "tools_server_argv"]

REPO = Path(__file__).resolve().parent.parent.parent
MODULE = "tests.mcp_servers.tools_server"
START_TIMEOUT = 30.0


def tools_server_argv(transport: str = "stdio", *extra: str) -> list[str]:
    """The command line that runs the tools server (cwd must be the repository root, see `REPO`)."""
    return [sys.executable, "-m", MODULE, transport, *extra]


def stdio_params(env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """`mcp.Client(stdio_params())` starts the tools server over stdio from the repository root."""
    argv = tools_server_argv("stdio")
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=str(REPO), env=dict(env or {}) or None)


def _http_argv(bearer_env: str | None) -> list[str]:
    return tools_server_argv("http", "--port", "0", *(["--require-bearer", bearer_env] if bearer_env else []))


def _url(line: str) -> str:
    if not line.startswith("PORT "):
        raise RuntimeError(f"tools_server did not report its port: {line!r}")
    return f"http://127.0.0.1:{int(line.split()[1])}/mcp"


@contextmanager
def http_tools_server(*, bearer_env: str | None = None, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run the tools server over streamable HTTP (for sync tests); yields its URL, stops it on exit.

    With `bearer_env`, the server requires `Authorization: Bearer <value of that variable>`; set the value
    through `env` (added to this process's environment for the child).
    """
    proc = subprocess.Popen(
        _http_argv(bearer_env), cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not select.select([proc.stdout], [], [], 0.1)[0]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tools_server did not start (exit code {proc.poll()})")
        yield _url(proc.stdout.readline())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def async_http_tools_server(
    *, bearer_env: str | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """`http_tools_server` for async tests: the event loop keeps running while the server starts."""
    argv = _http_argv(bearer_env)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        yield _url(line.decode())
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
