"""A real MCP server with small tools that tests of atlas's MCP support call, over stdio or streamable HTTP.

Run from the repository root:

    python -m tests.mcp_servers.tools_server stdio
    python -m tests.mcp_servers.tools_server http --port 0 [--require-bearer ENVVAR]

Over HTTP it prints one line `PORT <n>` on stdout once its socket listens, then serves
`http://127.0.0.1:<n>/mcp`. With `--require-bearer ENVVAR` every request whose `Authorization` is not
`Bearer <value of ENVVAR>` is refused with 401, so a test can check that atlas sends the configured token.

Each tool exists for one kind of test: `add`/`echo` for the happy path, `fail` for an error result, `slow` for
cancellation and timeouts (it writes `<marker>.started` before sleeping so a test can wait until it runs),
`env` for the server's environment, `pid`/`spawn_child` for process-tree cleanup, `counter` for whether a
server process is shared, `big` for result-size cuts, `structured` for structured content, `traceparent` for
the trace context a call carries in `_meta`.
"""

from __future__ import annotations

import argparse
import hmac
import os
import socket
import subprocess
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

server: MCPServer = MCPServer(name="atlas-test-tools", log_level="WARNING")

_counter = 0
# the grandchildren started by spawn_child, kept referenced so that they are not reaped behind the test's back
_children: list[subprocess.Popen[bytes]] = []


@server.tool(structured_output=False)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(structured_output=False)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(structured_output=False)
def fail(message: str) -> str:
    """Always fail with the given message (the result has isError true)."""
    raise ToolError(message)


@server.tool(structured_output=False)
async def slow(seconds: float, marker: str = "") -> str:
    """Sleep for `seconds`; with `marker`, first write the file `<marker>.started`."""
    if marker:
        await anyio.Path(marker + ".started").write_text(str(os.getpid()))
    await anyio.sleep(seconds)
    return "slept"


@server.tool(structured_output=False)
async def rendezvous(mine: str, other: str, seconds: float = 30.0) -> str:
    """Create the file `mine`, then wait for the file `other`: two calls only meet if they run at the same time."""
    await anyio.Path(mine).touch()
    for _ in range(int(seconds * 100)):
        if await anyio.Path(other).exists():
            return "met"
        await anyio.sleep(0.01)
    raise ToolError(f"{other} never appeared: the calls did not run concurrently")


@server.tool(structured_output=False)
def env(name: str) -> str:
    """The value of this server's environment variable `name`, or "<unset>"."""
    return os.environ.get(name, "<unset>")


@server.tool(structured_output=False)
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool(structured_output=False)
def spawn_child() -> int:
    """Start a grandchild `sleep 600` (in this server's process group) and return its pid."""
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _children.append(child)
    return child.pid


@server.tool(structured_output=False)
def counter() -> int:
    """Increment and return an in-process counter: it shows whether callers share this server process."""
    global _counter
    _counter += 1
    return _counter


@server.tool(structured_output=False)
def big(n: int) -> str:
    """Return "x" repeated n times."""
    return "x" * n


@server.tool()
def structured() -> dict[str, Any]:
    """Return a small object, so the result carries structured content."""
    return {"a": 1, "b": [1, 2]}


@server.tool(structured_output=False)
def traceparent(ctx: Context) -> str:
    """The W3C `traceparent` the call carried in its `_meta` (trace propagation, issue #18), or "<none>"."""
    meta: Any = ctx.request_context.meta or {}
    return str(meta.get("traceparent") or "<none>")


class RequireBearer:
    """ASGI middleware refusing (401) any request whose Authorization is not `Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": {"code": "unauthorized", "message": "bearer token required"}}'
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serve_http(port: int, bearer_env: str | None) -> None:
    """Listen on 127.0.0.1:`port` (0: any free port), print `PORT <n>`, then serve streamable HTTP at /mcp.

    The socket listens before the line is printed, so a client that connects at once is queued, not refused.
    """
    app: ASGIApp = server.streamable_http_app()
    if bearer_env is not None:
        token = os.environ.get(bearer_env)
        if not token:
            sys.exit(f"tools_server: --require-bearer {bearer_env}: the variable is unset or empty")
        app = RequireBearer(app, token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.mcp_servers.tools_server")
    sub = parser.add_subparsers(dest="transport", required=True)
    sub.add_parser("stdio")
    http = sub.add_parser("http")
    http.add_argument("--port", type=int, default=0)
    http.add_argument("--require-bearer", metavar="ENVVAR", default=None)
    args = parser.parse_args(argv)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        serve_http(args.port, args.require_bearer)


if __name__ == "__main__":
    main()
