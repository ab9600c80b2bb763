"""The HTTP API (spec §9): a Starlette app whose routes are one table of module-level functions.

Every route is a plain `async def route(request) -> Response` in the module of its concern (daemon, workspaces,
trigger, sessions, streams, schedules); what it serves (the daemon and the SSE streams' hub) is in `app.state`
(`atlas.api.state`), so no route is a closure over a daemon and each can be read on its own. Hot routes return
pre-encoded JSON, so a trigger costs the durable work of the accept pipeline and little else (spec §7.4 measures it
against a bare publish). Errors of every kind answer `{"error": ...}` (`atlas.api.errors`).

No FastAPI: every route reads its raw `Request` (its parameters were never declared to a framework), and
`atlas.api.openapi` builds `/openapi.json` itself (paths by hand, session shapes generated from their TypedDicts),
so FastAPI's validation and document generation had nothing left to do but cost a middleware per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from atlas.api import (
    admin_routes,
    chat,
    daemon_routes,
    logs,
    memory,
    rerun,
    schedules,
    sessions,
    streams,
    tools,
    trigger,
    workspaces,
)
from atlas.api.bench_routes import bench_routes
from atlas.api.errors import EXCEPTION_HANDLERS
from atlas.api.metrics import metrics as scrape_metrics
from atlas.api.openapi import openapi_json
from atlas.api.security import SecurityMiddleware, log_protections
from atlas.api.streams import StreamHub
from atlas.api.traced import traced
from atlas.ui import mount_ui

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon


def _route(path: str, endpoint: Callable[..., Any], method: str) -> Route:
    """A route for exactly `method`: Starlette adds HEAD to every GET route, and the API answers HEAD with 405
    (as it always has) rather than with an empty 200."""
    route = Route(path, endpoint, methods=[method])
    assert route.methods is not None
    route.methods.discard("HEAD")
    return route


def routes() -> list[BaseRoute]:
    """The route table, in match order (the first match wins)."""
    return [
        # First: the hottest endpoint is matched before any other route.
        _route(trigger.TRIGGER_PATH, traced(trigger.trigger, "POST", trigger.TRIGGER_PATH), "POST"),
        _route("/health", daemon_routes.health, "GET"),
        _route("/metrics", scrape_metrics, "GET"),
        _route("/api/daemon/status", daemon_routes.daemon_status, "GET"),
        _route("/api/daemon/shutdown", daemon_routes.daemon_shutdown, "POST"),
        _route("/api/admin/rebuild-readmodel", admin_routes.rebuild_readmodel, "POST"),
        _route("/api/workspaces", workspaces.list_workspaces, "GET"),
        _route("/api/workspaces/add", workspaces.add_workspace, "POST"),
        _route("/api/workspaces/{workspace_id}", workspaces.show_workspace, "GET"),
        _route("/api/workspaces/{workspace_id}", workspaces.remove_workspace, "DELETE"),
        _route("/api/workspaces/{workspace_id}/jobs", workspaces.list_jobs, "GET"),
        _route("/api/workspaces/{workspace_id}/signals", workspaces.list_signals, "GET"),
        _route("/api/workspaces/{workspace_id}/tools", tools.list_tools, "GET"),
        _route("/api/workspaces/{workspace_id}/chat", chat.post_chat, "POST"),
        _route("/api/workspaces/{workspace_id}/chat", chat.list_chats, "GET"),
        _route("/api/workspaces/{workspace_id}/chat/{chat_id}", chat.get_chat, "GET"),
        _route("/api/workspaces/{workspace_id}/chat/{chat_id}", chat.delete_chat, "DELETE"),
        _route("/api/workspaces/{workspace_id}/chat/{chat_id}/stream", chat.chat_stream, "GET"),
        _route("/api/workspaces/{workspace_id}/chat/{chat_id}/title", chat.patch_title, "PATCH"),
        _route("/api/workspaces/{workspace_id}/memory", memory.list_corpora, "GET"),
        _route("/api/workspaces/{workspace_id}/memory/{corpus}", memory.list_entries, "GET"),
        _route("/api/workspaces/{workspace_id}/memory/{corpus}/{entry_id}", memory.delete_entry, "DELETE"),
        # The streams before /api/sessions/{session_id}: /api/sessions/stream must win.
        _route("/api/sessions/stream", streams.tree_stream, "GET"),
        _route("/api/sessions/{session_id}/stream", streams.session_stream, "GET"),
        _route("/api/sessions", sessions.list_sessions, "GET"),
        _route("/api/sessions/{session_id}", sessions.get_session, "GET"),
        _route("/api/sessions/{session_id}/children", sessions.session_children, "GET"),
        _route("/api/sessions/{session_id}/logs", logs.session_logs, "GET"),
        _route("/api/sessions/{session_id}/rerun",
               traced(rerun.rerun_session, "POST", "/api/sessions/{session_id}/rerun"), "POST"),
        _route("/api/sessions/{session_id}", sessions.cancel_session, "DELETE"),
        *bench_routes(),
        _route("/api/schedules", schedules.list_schedules, "GET"),
        _route("/api/schedules/{workspace_id}/{signal_id}/pause", schedules.pause_schedule, "POST"),
        _route("/api/schedules/{workspace_id}/{signal_id}/resume", schedules.resume_schedule, "POST"),
        Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),  # GET and HEAD, as ever
    ]


def create_app(daemon: Daemon) -> Starlette:
    """The app serving `daemon`: security middleware, the route table, JSON errors and the web UI.

    `app.state.streams` is the SSE streams' hub: whoever stops the HTTP server calls its `close_all()`.
    """
    app = Starlette(
        routes=routes(),
        middleware=[Middleware(SecurityMiddleware, settings=daemon.settings)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.daemon = daemon
    app.state.streams = StreamHub()
    log_protections(daemon.settings)
    mount_ui(app)  # last: its fallback must never shadow /api, /health or /openapi.json
    return app
