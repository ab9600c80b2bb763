"""The HTTP API (spec §9): FastAPI on uvicorn, JSON errors everywhere.

Hot routes take the raw `Request` and return pre-encoded JSON, so a trigger costs the durable work of the accept
pipeline and little else (spec §7.4 measures it against a bare publish).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from atlas import __version__
from atlas.api.bench_routes import add_bench_routes
from atlas.api.errors import EXCEPTION_HANDLERS, error_response
from atlas.api.openapi import install_openapi
from atlas.api.responses import json_response, read_body
from atlas.api.schedules import add_schedule_routes
from atlas.api.security import install_security
from atlas.api.streams import add_stream_routes
from atlas.api.trigger import add_trigger_route
from atlas.bus.client import KV_WORKSPACES
from atlas.errors import AtlasError
from atlas.runtime.daemon import Daemon
from atlas.sessions.events import now_iso
from atlas.sessions.readmodel import normalize_timestamp
from atlas.sessions.reducer import STATUSES, is_terminal
from atlas.ui import mount_ui

log = logging.getLogger("atlas.api")

LIST_PARAMS = {"workspaceId", "correlationId", "jobName", "signalId", "parentSessionId", "rootSessionId",
               "status", "since", "until", "limit", "cursor"}


def _invalid(path: str, message: str) -> AtlasError:
    return AtlasError("invalid_query", message, [{"path": path, "message": message}])


def _time(key: str, value: str | None) -> str | None:
    """An RFC 3339 bound in the stored shape, or 400 naming the parameter (never blamed on the cursor)."""
    if not value:
        return None
    try:
        return normalize_timestamp(value)
    except (ValueError, OverflowError):
        raise _invalid(key, f"{key} must be an RFC 3339 time with a zone, e.g. 2026-11-24T10:15:02.123Z") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    limit = int(raw) if re.fullmatch(r"[0-9]{1,3}", raw) else 0
    if not 1 <= limit <= 500:
        raise _invalid("limit", "limit must be an integer from 1 to 500")
    return limit


def _statuses(raw: str | None) -> list[str] | None:
    statuses = [s.strip() for s in (raw or "").split(",") if s.strip()]
    if not statuses:
        return None
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise _invalid("status", f"Unknown status {', '.join(bad)}; expected one of {', '.join(sorted(STATUSES))}")
    return statuses


SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        details = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error_response("invalid_query", "Invalid request parameters", details)


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="atlasd", version=__version__, docs_url=None, redoc_url=None)
    app.state.daemon = daemon
    install_security(app, daemon.settings)
    install_error_handlers(app)

    # ------------------------------------------------------------ daemon

    @app.get("/health", tags=["daemon"])
    async def health() -> Response:
        # `bus` is "degraded" while the bus cannot take writes (disconnected, or its store's disk is full): triggers
        # get 503 then, so a running daemon reports `degraded` rather than `ok` (issue #19, bug 9).
        bus_health = getattr(daemon, "bus_health", None)
        bus = "ok" if bus_health is None else bus_health.status
        status = daemon.status
        return json_response({
            "status": "degraded" if status == "ok" and bus != "ok" else status,
            "bus": bus,
            "uptime": daemon.uptime,
            "timestamp": now_iso(),
            "version": __version__,
            "activeWorkspaces": len(daemon.workspaces.all()),
            "activeSessions": len(daemon.runs),
        })

    @app.get("/api/daemon/status", tags=["daemon"])
    async def daemon_status() -> Response:
        import resource

        counts = daemon.store.rm.count_by_status()
        cluster = []
        for key in sorted(await daemon.live_daemons()):
            found = await daemon.bus.kv_get("DAEMONS", key)
            if found is not None:
                cluster.append({"daemonId": key, **found[0]})
        return json_response({
            "status": "running",
            "version": __version__,
            "pid": os.getpid(),
            "daemonId": daemon.daemon_id,
            "startedAt": daemon.started_at,
            "uptime": daemon.uptime,
            "bind": f"{daemon.settings.host}:{daemon.settings.port}",
            "nats": {"mode": daemon.nats_mode, "url": _redact_url(daemon.nats_url)},
            "sessions": {"queued": counts.get("queued", 0), "active": counts.get("active", 0)},
            "workspaces": len(daemon.workspaces.all()),
            "memoryUsage": {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
            "cluster": cluster,
        })

    @app.post("/api/daemon/shutdown", tags=["daemon"])
    async def daemon_shutdown() -> Response:
        if daemon.request_shutdown is None:
            raise AtlasError("forbidden", "This daemon cannot be shut down over HTTP")
        asyncio.get_running_loop().call_later(0.05, daemon.request_shutdown)
        return json_response({"message": "Daemon shutdown initiated"})

    # ------------------------------------------------------------ workspaces

    def workspace_or_404(workspace_id: str) -> Any:
        ws = daemon.workspaces.get(workspace_id)
        if ws is None:
            raise AtlasError("workspace_not_found", f"Workspace '{workspace_id}' not found")
        return ws

    @app.get("/api/workspaces", tags=["workspaces"])
    async def list_workspaces() -> Response:
        return json_response([ws.entry() for ws in daemon.workspaces.all()])

    @app.post("/api/workspaces/add", tags=["workspaces"])
    async def add_workspace(request: Request) -> Response:
        import json

        raw = await read_body(request, daemon.settings.max_body)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError) as exc:
            raise AtlasError("invalid_json", f"Malformed JSON body: {type(exc).__name__}") from None
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path or not path.isprintable() \
                or not _encodable(path):
            raise AtlasError("invalid_body", "Body must be {\"path\": <absolute path>}",
                             [{"path": "path", "message": "must be an absolute path"}])
        ws, created = await daemon.workspaces.add(Path(path), daemon.settings.workspace_roots)
        await daemon.bus.kv_put(KV_WORKSPACES, ws.id, {"path": str(ws.path), "configDigest": ws.loaded.digest,
                                                       "addedAt": ws.created_at})
        entry = ws.entry()
        out = {k: entry[k] for k in ("id", "name", "description", "status", "path", "createdAt", "lastSeen")}
        return json_response({**out, "created": created}, 201 if created else 200)

    @app.get("/api/workspaces/{workspace_id}", tags=["workspaces"])
    async def show_workspace(workspace_id: str) -> Response:
        ws = workspace_or_404(workspace_id)
        config = ws.config.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json_response({**ws.entry(), "config": config})

    @app.delete("/api/workspaces/{workspace_id}", tags=["workspaces"])
    async def remove_workspace(workspace_id: str, request: Request) -> Response:
        ws = workspace_or_404(workspace_id)
        force = request.query_params.get("force", "").lower() in {"true", "1", "yes"}
        active = [v["sessionId"] for v in daemon.store.live_sessions() if v.get("workspaceId") == ws.id]
        if active and not force:
            raise AtlasError("workspace_busy", f"Workspace '{ws.id}' has active sessions",
                             {"activeSessionIds": active})
        for sid in active:
            await daemon.cancel(sid, "cancelled", "workspace_removed", f"Workspace '{ws.id}' was removed")
        daemon.workspaces.remove(ws.id)
        await daemon.bus.kv_delete(KV_WORKSPACES, ws.id)
        return json_response({"message": f"Workspace '{ws.id}' removed", "id": ws.id})

    @app.get("/api/workspaces/{workspace_id}/jobs", tags=["workspaces"])
    async def list_jobs(workspace_id: str) -> Response:
        return json_response(workspace_or_404(workspace_id).jobs_listing())

    @app.get("/api/workspaces/{workspace_id}/signals", tags=["workspaces"])
    async def list_signals(workspace_id: str) -> Response:
        ws = workspace_or_404(workspace_id)
        out = []
        for sig_id, sig in ws.config.signals.items():
            spec = {"id": sig_id, **sig.model_dump(mode="json", by_alias=True, exclude_none=True)}
            # A signal triggers at most one job (checked at load): a look-up, not a scan of every job per signal,
            # which made this route quadratic and held the event loop for tens of seconds on a 1 MiB workspace.
            jobs = [ws.job_for_signal[sig_id]] if sig_id in ws.job_for_signal else []
            out.append({"name": sig_id, "signal": spec, "jobs": jobs})
        return json_response({"signals": out})

    add_trigger_route(app, daemon)

    # ------------------------------------------------------------ sessions

    add_stream_routes(app, daemon)  # before /api/sessions/{id}: /api/sessions/stream must win

    @app.get("/api/sessions", tags=["sessions"])
    async def list_sessions(request: Request) -> Response:
        q = request.query_params
        unknown = [k for k in q if k not in LIST_PARAMS]
        if unknown:
            raise _invalid(unknown[0], f"Unknown query parameter(s): {', '.join(unknown)}")
        since, until = _time("since", q.get("since")), _time("until", q.get("until"))
        try:
            sessions, cursor = daemon.store.rm.list_sessions(
                workspace_id=q.get("workspaceId"),
                correlation_id=q.get("correlationId"),
                job_name=q.get("jobName"),
                signal_id=q.get("signalId"),
                parent_session_id=q.get("parentSessionId"),
                root_session_id=q.get("rootSessionId"),
                statuses=_statuses(q.get("status")),
                since=since,
                until=until,
                limit=_limit(q.get("limit")),
                cursor=q.get("cursor"),
            )
        except ValueError:
            raise _invalid("cursor", "Invalid cursor: use the nextCursor of a previous page") from None
        body: dict[str, Any] = {"sessions": sessions}
        if cursor:
            body["nextCursor"] = cursor
        response = json_response(body)
        # A weak validator over the exact bytes keeps UI polling cheap (spec §7.2): unchanged lists answer 304.
        etag = 'W/"' + hashlib.blake2b(response.body, digest_size=12).hexdigest() + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return response

    def view_or_404(session_id: str) -> dict[str, Any]:
        view = daemon.store.view(session_id) if SESSION_ID.fullmatch(session_id) else None
        if view is None:
            raise AtlasError("session_not_found", f"Session '{session_id}' not found")
        return view

    @app.get("/api/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str) -> Response:
        if not SESSION_ID.fullmatch(session_id):  # also keeps wildcards out of the subject lookup below
            raise AtlasError("session_not_found", f"Session '{session_id}' not found")
        view = daemon.store.view(session_id)
        if view is None:
            view = await daemon.rebuild_view(session_id)  # accepted by another daemon, not materialised yet
        if view is None:
            raise AtlasError("session_not_found", f"Session '{session_id}' not found")
        return json_response(view)

    @app.get("/api/sessions/{session_id}/children", tags=["sessions"])
    async def session_children(session_id: str) -> Response:
        view_or_404(session_id)
        return json_response({"sessions": daemon.store.rm.children(session_id)})

    @app.delete("/api/sessions/{session_id}", tags=["sessions"])
    async def cancel_session(session_id: str) -> Response:
        view = view_or_404(session_id)
        if is_terminal(view["status"]):
            raise AtlasError("session_not_active", f"Session '{session_id}' already ended {view['status']}",
                             {"status": view["status"]})
        cancelled = await daemon.cancel_tree(session_id, "cancelled_by_user", "Cancelled by user")
        body = {"message": f"Session {session_id} cancelled", "sessionId": session_id,
                "workspaceId": view["workspaceId"], "cancelled": cancelled}
        try:
            final = await daemon.store.wait_terminal(session_id, 5.0)
        except TimeoutError:
            current = daemon.store.view(session_id) or view
            return json_response({**body, "status": current["status"], "cancelRequested": True}, 202)
        return json_response({**body, "status": final["status"]})

    add_bench_routes(app, daemon)
    add_schedule_routes(app, daemon)
    install_openapi(app)
    mount_ui(app)  # last: its fallback must never shadow /api, /health or /openapi.json
    return app


def _redact_url(url: str) -> str:
    """NATS URLs are shown without user info (credentials or tokens)."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.partition("://")
        out.append(scheme + sep + rest.split("@", 1)[-1] if sep else part)
    return ",".join(out)
