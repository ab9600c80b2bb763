"""MCP servers of the loaded workspaces, through the official `mcp` SDK (issue #14, item 5).

Lifetime (decision, docs/decisions.md): servers are **pooled per workspace**. A server starts on the first use
of one of its tools (or `GET /api/workspaces/<id>/tools`), is shared by that workspace's sessions, is restarted
on the next use if it died, and stops when its workspace is unloaded or reloaded and when the daemon stops. This
is the reference's model too: a server is the workspace's tool, not a session's (starting `npx …` per session
would cost seconds per run). What a stateful server keeps (an SQLite file, a browser) is therefore shared by
the sessions of one workspace — as a user of that workspace expects — and never by two workspaces.

Each server connection is held by one owner task, because the SDK's transports are anyio context managers that
must be entered and left in the same task; calls from any session task go through the connected `Client`.

Stdio servers: an argument list, never a shell; a minimal environment (the SDK's HOME, LOGNAME, PATH, SHELL,
TERM, USER, with the daemon's own `bin` directory first on PATH so that servers installed beside atlas resolve)
plus the server's `env`, whose `${VAR}` references are expanded from the daemon's environment at start (never at
load); their own process group (the SDK starts a new session and kills the whole group on stop); the launcher
`atlas.mcp.launch` ties them to the daemon's life; stderr goes to `$ATLAS_HOME/logs/mcp/<ws>.<server>.log`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO, cast

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import RequestParamsMeta

from atlas.agents.base import StepError
from atlas.config.durations import parse_duration
from atlas.config.model import McpConfig, McpServerConfig, McpStdioTransport
from atlas.llm.conversation import ToolSpec
from atlas.llm.loop import ToolOutcome
from atlas.mcp.reaper import session_members
from atlas.observability import tracing

__all__ = ["McpHub", "McpServer", "ResolvedTools", "WorkspaceTools"]

log = logging.getLogger(__name__)

#: How long a server may take to start and answer `initialize` and `tools/list`.
START_TIMEOUT = 60.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


class ServerUnavailable(Exception):
    """A server could not be started or reached; the message names the server and never a secret."""


def expand_env(values: Mapping[str, str], environ: Mapping[str, str], server_id: str,
               on_secret: Callable[[str], None] = lambda value: None) -> dict[str, str]:
    """`${VAR}` in `env:` values from the daemon's environment; an unset variable is an error naming it.

    The value of a variable whose name says it holds a credential (`…KEY`, `…TOKEN`, `…SECRET`, `…PASSWORD`) goes
    to `on_secret`, so that a tool echoing it is redacted from the record like an API key.
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        def substitute(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name not in environ:
                raise ServerUnavailable(f"MCP server {server_id!r}: env.{key} uses ${{{name}}}, which is unset")
            if _SECRET_NAME.search(name):
                on_secret(environ[name])
            return environ[name]

        out[key] = _VAR.sub(substitute, value)
    return out


class McpServer:
    """One configured server: its connection (owner task), its tool list, its calls."""

    def __init__(self, workspace_id: str, server_id: str, config: McpServerConfig, *, defaults: Any,
                 workspace_dir: Path, home: Path, environ: Mapping[str, str],
                 on_secret: Callable[[str], None] = lambda value: None) -> None:
        self.workspace_id = workspace_id
        self.id = server_id
        self.config = config
        timeouts = config.client_config.timeout if config.client_config is not None else defaults
        self.progress_timeout = parse_duration(timeouts.progressTimeout)
        self.total_timeout = parse_duration(timeouts.maxTotalTimeout)
        self._workspace_dir = workspace_dir
        self._run_dir = home / "run" / "mcp"
        self._log_dir = home / "logs" / "mcp"
        self._environ = environ
        self._on_secret = on_secret
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._client: Client | None = None
        self.tools: list[ToolSpec] = []
        self.error: str | None = None
        self.starts = 0
        self._pid: int | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def pidfile(self) -> Path:
        return self._run_dir / f"{self.workspace_id}.{self.id}.pid"

    def running(self) -> bool:
        """The owner task holds a connection and, for stdio, the server process is alive (not a zombie)."""
        if self._task is None or self._task.done() or self._client is None:
            return False
        if isinstance(self.config.transport, McpStdioTransport):
            pid = self.pid()
            if pid is None:
                return False
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                    state = stat.read().rpartition(")")[2].split()[0]
            except OSError:
                return False
            return state not in ("Z", "X")
        return True

    def pid(self) -> int | None:
        """The running stdio server's pid, read once from the launcher's pid file (checked on every call)."""
        if self._pid is None:
            try:
                self._pid = int(self.pidfile.read_text(encoding="ascii").split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return self._pid

    async def ensure(self) -> Client:
        """The connected client, starting (or restarting a dead) server first; raises ServerUnavailable."""
        if self.running():  # the hot path: no lock, one read of /proc
            assert self._client is not None
            return self._client
        async with self._lock:
            if self.running():
                assert self._client is not None
                return self._client
            await self._stop_owner()
            self.starts += 1
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._own(ready, self._stop), name=f"mcp:{self.workspace_id}.{self.id}")
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    client = await asyncio.shield(ready)
                self.tools = await self._list_tools(client)
            except Exception as exc:  # any start failure (often an ExceptionGroup from the SDK's task groups)
                await self._stop_owner()
                message = exc.args[0] if isinstance(exc, ServerUnavailable) else _describe(exc)
                if isinstance(exc, TimeoutError):
                    message = f"did not start within {START_TIMEOUT:g}s"
                self.error = f"MCP server {self.id!r}: {message}" if not message.startswith("MCP server") else message
                raise ServerUnavailable(self.error) from exc
            self.error = None
            self._client = client
            return client

    async def _own(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        """The owner task: enter the SDK client, hand it out, hold it until told to stop or the server dies."""
        errlog: TextIO | None = None
        try:
            target: Any
            if isinstance(self.config.transport, McpStdioTransport):
                errlog = self._open_log()
                target = self._stdio_params()
                async with Client(target) as client:
                    await self._hold(client, ready, stop)
            else:
                headers = self._auth_headers()
                async with create_mcp_http_client(headers=headers) as http:
                    transport = streamable_http_client(self.config.transport.url, http_client=http)
                    async with Client(transport) as client:
                        await self._hold(client, ready, stop)
        except BaseException as exc:  # every start failure goes to the waiting caller
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ServerUnavailable("start cancelled"))
            if not isinstance(exc, Exception):
                raise
            log.info("MCP server %s.%s ended: %s", self.workspace_id, self.id, _describe(exc))
        finally:
            self._client = None
            self._stop_leftovers()
            if errlog is not None:
                errlog.close()

    def _stop_leftovers(self) -> None:
        """Kill what is left of a stdio server's session once the SDK let go of it.

        Why: the SDK kills the server's process group only when the server outlives the grace period after its
        stdin closes; a server that exits promptly leaves its own children running. They carry its session id.
        """
        pid = self.pid()
        self._pid = None
        self.pidfile.unlink(missing_ok=True)
        if pid is None:
            return
        for member in session_members(pid):
            with suppress(OSError):
                os.kill(member, signal.SIGKILL)

    async def _hold(self, client: Client, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        if not ready.done():
            ready.set_result(client)
        await stop.wait()

    def _open_log(self) -> TextIO:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        return open(self._log_dir / f"{self.workspace_id}.{self.id}.log", "a", encoding="utf-8")

    def _stdio_params(self) -> StdioServerParameters:
        transport = self.config.transport
        assert isinstance(transport, McpStdioTransport)
        env = get_default_environment()
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
        env.update(expand_env(self.config.env, self._environ, self.id, self._on_secret))
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._pid = None
        self.pidfile.unlink(missing_ok=True)
        command = [sys.executable, "-m", "atlas.mcp.launch", str(self.pidfile), "--", transport.command,
                   *transport.args]
        return StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(self._workspace_dir))

    def _auth_headers(self) -> dict[str, str] | None:
        auth = self.config.auth
        if auth is None:
            return None
        token = self._environ.get(auth.token_env, "")
        if not token:
            raise ServerUnavailable(f"MCP server {self.id!r}: auth.token_env {auth.token_env} is unset or empty")
        self._on_secret(token)
        return {"Authorization": f"Bearer {token}"}

    async def _list_tools(self, client: Client) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        cursor: str | None = None
        for _page in range(100):
            listing = await client.list_tools(cursor=cursor)
            for tool in listing.tools:
                if self._allowed(tool.name):
                    specs.append(ToolSpec(tool.name, tool.description or "", dict(tool.input_schema)))
            cursor = listing.next_cursor
            if not cursor:
                break
        return specs

    def _allowed(self, name: str) -> bool:
        rules = self.config.tools
        if rules is None:
            return True
        if rules.allow is not None and name not in rules.allow:
            return False
        return not (rules.deny is not None and name in rules.deny)

    async def _stop_owner(self) -> None:
        task, stop = self._task, self._stop
        self._task = self._stop = None
        self._client = None
        if task is None:
            return
        if stop is not None:
            stop.set()
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with suppress(BaseException):
                await task
        except Exception:
            pass  # it already ended with an error, logged by the owner

    async def aclose(self) -> None:
        async with self._lock:
            await self._stop_owner()

    # ------------------------------------------------------------ calls

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        """One `tools/call`, bounded by progressTimeout (reset by each progress notification) and
        maxTotalTimeout; every failure is an error outcome for the model."""
        try:
            client = await self.ensure()
        except ServerUnavailable as exc:
            return _error(str(exc), self.id)
        loop = asyncio.get_running_loop()
        progress_scope: asyncio.Timeout | None = None

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if progress_scope is not None:
                progress_scope.reschedule(loop.time() + self.progress_timeout)

        total_scope = asyncio.timeout(self.total_timeout)
        try:
            async with total_scope:
                progress_scope = asyncio.timeout(self.progress_timeout)
                async with progress_scope:
                    result = await client.call_tool(name, args, progress_callback=on_progress, meta=_trace_meta())
        except TimeoutError:
            if total_scope.expired():
                return _error(f"tool {name!r} ran past maxTotalTimeout ({self.total_timeout:g}s)", self.id)
            return _error(f"tool {name!r} sent no progress for progressTimeout ({self.progress_timeout:g}s)",
                          self.id)
        except MCPError as exc:
            return _error(f"MCP error from {self.id!r}: {exc}", self.id)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError,
                OSError) as exc:
            return _error(f"MCP server {self.id!r} connection lost: {_describe(exc)}", self.id)
        except Exception as exc:
            return _error(f"tool {name!r} failed: {_describe(exc)}", self.id)
        texts = [getattr(block, "text", None) for block in result.content]
        text = "\n".join(t for t in texts if isinstance(t, str))
        structured = result.structured_content
        recorded: Any = structured if structured is not None else text
        if result.is_error:
            return ToolOutcome(text=text or "tool error", result=recorded, error=text or "tool error",
                               server=self.id)
        return ToolOutcome(text=text, result=recorded, server=self.id)


def _trace_meta() -> RequestParamsMeta | None:
    """`_meta.traceparent` of a traced run's tool call: the W3C trace context the MCP specification carries in a
    request's `_meta` (a pooled server's HTTP connection is shared by every run, so a header could not say which
    call it is). None, and nothing sent, when the run is not traced."""
    if tracing.active() is None:
        return None
    traceparent = tracing.current_traceparent()
    return cast(RequestParamsMeta, {"traceparent": traceparent}) if traceparent is not None else None


def _error(message: str, server: str | None) -> ToolOutcome:
    return ToolOutcome(text=f"Error: {message}", result=None, error=message, server=server)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        return "; ".join(_describe(leaf) for leaf in leaves[:3]) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _leaves(group: BaseExceptionGroup[Any]) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class ResolvedTools:
    """The tools one step offers: specs for the model and the route of each name to its server."""

    def __init__(self, routes: dict[str, McpServer], specs: list[ToolSpec]) -> None:
        self._routes = routes
        self.specs = specs

    def server_of(self, name: str) -> str | None:
        server = self._routes.get(name)
        return server.id if server is not None else None

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        server = self._routes.get(name)
        if server is None:
            offered = ", ".join(sorted(self._routes)) or "none"
            return _error(f"unknown tool {name!r}; this step offers: {offered}", None)
        return await server.call(name, args)


class WorkspaceTools:
    """The servers of one workspace's `tools.mcp`."""

    def __init__(self, workspace_id: str, config: McpConfig, *, workspace_dir: Path, home: Path,
                 environ: Mapping[str, str], on_secret: Callable[[str], None] = lambda value: None) -> None:
        self.workspace_id = workspace_id
        self.config = config
        defaults = config.client_config.timeout
        self.servers = {
            server_id: McpServer(workspace_id, server_id, server, defaults=defaults, workspace_dir=workspace_dir,
                                 home=home, environ=environ, on_secret=on_secret)
            for server_id, server in config.servers.items()
        }

    async def start_all(self) -> dict[str, str]:
        """Start every server (concurrently); returns the start error of each one that failed."""
        async def start(server: McpServer) -> tuple[str, str | None]:
            try:
                await server.ensure()
            except ServerUnavailable as exc:
                return server.id, str(exc)
            return server.id, None

        done = await asyncio.gather(*(start(server) for server in self.servers.values()))
        return {server_id: error for server_id, error in done if error is not None}

    async def resolve(self, names: list[str]) -> ResolvedTools:
        """The tools an agent's `tools:` list names: a tool name, or a server id for all its tools.

        Raises StepError `unknown_tool` (with the offered names) and `tool_conflict` (a name two servers offer).
        """
        failures = await self.start_all()
        offered: dict[str, list[McpServer]] = {}
        for server in self.servers.values():
            for spec in server.tools:
                offered.setdefault(spec.name, []).append(server)
        routes: dict[str, McpServer] = {}
        specs: list[ToolSpec] = []

        def add(name: str, server: McpServer, *, by_server: bool = False) -> None:
            owners = offered.get(name, [])
            if len(owners) > 1 and not by_server:
                ids = " and ".join(repr(owner.id) for owner in owners)
                raise StepError("tool_conflict", f"tool {name!r} is offered by MCP servers {ids}: "
                                "deny it on one of them (tools.mcp.servers.<id>.tools.deny)")
            if name not in routes:
                routes[name] = server
                specs.append(next(spec for spec in server.tools if spec.name == name))

        for name in names:
            if name in self.servers and name not in offered:
                for spec in self.servers[name].tools:
                    add(spec.name, self.servers[name], by_server=True)
            elif name in offered:
                add(name, offered[name][0])
            else:
                listed = ", ".join(sorted(offered)) or "none"
                message = f"no MCP server offers tool {name!r}; offered: {listed}"
                if failures:
                    message += "; servers that failed to start: " + "; ".join(failures.values())
                raise StepError("unknown_tool", message)
        return ResolvedTools(routes, specs)

    async def listing(self) -> list[dict[str, Any]]:
        """`GET /api/workspaces/<id>/tools`: each server with its status and tools (starting them if needed)."""
        failures = await self.start_all()
        out = []
        for server_id, server in self.servers.items():
            transport = server.config.transport
            entry: dict[str, Any] = {"id": server_id, "transport": transport.type,
                                     "status": "error" if server_id in failures else "running",
                                     "tools": [{"name": t.name, "description": t.description,
                                                "inputSchema": t.input_schema} for t in server.tools]}
            if server.config.description:
                entry["description"] = server.config.description
            if server_id in failures:
                entry["error"] = failures[server_id]
                entry["tools"] = []
            out.append(entry)
        return out

    async def aclose(self) -> None:
        await asyncio.gather(*(server.aclose() for server in self.servers.values()))


class McpHub:
    """The daemon's MCP servers, one `WorkspaceTools` per loaded workspace that declares `tools.mcp`."""

    def __init__(self, home: Path, environ: Mapping[str, str] | None = None,
                 on_secret: Callable[[str], None] = lambda value: None) -> None:
        """`on_secret` receives the credentials servers are started with (the runtime's `Templater.add_secret`)."""
        self.home = home
        self._environ = environ if environ is not None else os.environ
        self._on_secret = on_secret
        self._workspaces: dict[str, WorkspaceTools] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def for_workspace(self, workspace_id: str, config: McpConfig | None, workspace_dir: Path) -> WorkspaceTools | None:
        """The workspace's servers; a reloaded workspace with another `tools.mcp` gets new ones (the old ones
        are stopped in the background)."""
        current = self._workspaces.get(workspace_id)
        if current is not None and current.config == config:
            return current
        if current is not None:
            del self._workspaces[workspace_id]
            closing = asyncio.get_running_loop().create_task(current.aclose())
            self._closing.add(closing)  # a reference until it is done: the loop keeps only weak ones
            closing.add_done_callback(self._closing.discard)
        if config is None or not config.servers:
            return None
        tools = WorkspaceTools(workspace_id, config, workspace_dir=workspace_dir, home=self.home,
                               environ=self._environ, on_secret=self._on_secret)
        self._workspaces[workspace_id] = tools
        return tools

    async def unload(self, workspace_id: str) -> None:
        tools = self._workspaces.pop(workspace_id, None)
        if tools is not None:
            await tools.aclose()

    async def aclose(self) -> None:
        tools, self._workspaces = list(self._workspaces.values()), {}
        await asyncio.gather(*(entry.aclose() for entry in tools), *self._closing)


