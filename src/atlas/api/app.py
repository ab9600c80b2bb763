"""The HTTP API (spec §5, §9): FastAPI on uvicorn, JSON errors everywhere.

Hot routes take the raw `Request` and return pre-encoded JSON so a trigger costs the durable work of the accept
pipeline and little else (spec §7.4 measures it against a bare publish).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from atlas import __version__
from atlas.api.bench_routes import add_bench_routes
from atlas.api.body import parse_trigger_body
from atlas.api.security import install_security
from atlas.api.streams import add_stream_routes
from atlas.config.durations import parse_duration
from atlas.config.model import HttpSignal
from atlas.errors import ApiError
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.daemon import Daemon
from atlas.sessions.events import now_iso
from atlas.sessions.reducer import STATUSES

log = logging.getLogger("atlas.api")

TRUE_VALUES = {"true", "1", "yes"}
FALSE_VALUES = {"false", "0", "no"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def error_response(err: ApiError) -> Response:
    return json_response(err.body(), err.status, err.headers)


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="atlasd", version=__version__, docs_url=None, redoc_url=None)
    app.state.daemon = daemon
    install_security(app, daemon.settings)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(ApiError(404, "not_found", "No such route"))
        if exc.status_code == 405:
            return error_response(ApiError(405, "method_not_allowed", "Method not allowed on this route"))
        return error_response(ApiError(exc.status_code, "http_error", str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        details = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error_response(ApiError(400, "invalid_query", "Invalid request parameters", details))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        request_id = os.urandom(8).hex()
        log.error("internal error %s: %s", request_id, type(exc).__name__, exc_info=exc)
        return error_response(ApiError(500, "internal_error", "Internal server error", {"requestId": request_id},
                                       {"X-Request-Id": request_id}))

    # ------------------------------------------------------------ health and workspaces

    @app.get("/health")
    async def health() -> Response:
        return json_response({
            "status": "ok" if daemon.status == "ok" else "starting" if daemon.status == "starting" else daemon.status,
            "uptime": daemon.uptime,
            "timestamp": now_iso(),
            "version": __version__,
            "activeWorkspaces": len(daemon.workspaces.all()),
            "activeSessions": len(daemon.runs),
        })

    @app.get("/api/workspaces")
    async def list_workspaces() -> Response:
        return json_response([ws.entry() for ws in daemon.workspaces.all()])

    # ------------------------------------------------------------ triggering

    @app.post("/api/workspaces/{workspace_id}/signals/{signal_id}")
    async def trigger(workspace_id: str, signal_id: str, request: Request) -> Response:
        ws, job_id = daemon.accept.resolve(workspace_id, signal_id)
        nowait_raw = request.query_params.get("nowait")
        nowait = False
        if nowait_raw is not None:
            low = nowait_raw.lower()
            if low in TRUE_VALUES:
                nowait = True
            elif low not in FALSE_VALUES:
                raise ApiError(400, "invalid_query", f"Invalid value for nowait: {nowait_raw!r}",
                               [{"path": "nowait", "message": "expected true, false, 1, 0, yes or no"}])
        raw = await _read_body(request, daemon.settings.max_body)
        parsed = parse_trigger_body(raw, request.headers)
        signal = ws.config.signals[signal_id]
        if parsed.webhook is not None and signal.provider != "http":
            raise ApiError(400, "envelope_required",
                           f"Signal '{signal_id}' ({signal.provider}) accepts only the envelope body")
        req = TriggerRequest(
            workspace_id=ws.id,
            signal_id=signal_id,
            payload=parsed.payload,
            trigger="webhook" if parsed.webhook is not None else "http",
            parent_session_id=parsed.parent_session_id,
            stream_id=parsed.stream_id,
            webhook=parsed.webhook,
        )
        accepted = await daemon.accept.accept(req)
        if nowait or parsed.webhook is not None:
            return json_response(
                {
                    "message": "Webhook accepted" if parsed.webhook is not None else "Signal accepted",
                    "status": "accepted",
                    "workspaceId": ws.id,
                    "signalId": signal_id,
                    "correlationId": accepted.correlation_id,
                    "sessionId": accepted.session_id,
                },
                202,
                {"Location": f"/api/sessions/{accepted.session_id}"},
            )
        limit = signal.config.timeout if isinstance(signal, HttpSignal) else None
        if limit is not None:
            wait_s = parse_duration(limit)
        else:
            job = ws.job(job_id)
            wait_s = parse_duration(job.config.timeout or ws.config.workspace.timeout.maxTotalTimeout) + 60
        try:
            view = await daemon.store.wait_terminal(accepted.session_id, wait_s)
        except TimeoutError:
            raise ApiError(504, "wait_timeout", "The session did not finish in time; it keeps running",
                           {"sessionId": accepted.session_id, "correlationId": accepted.correlation_id}) from None
        return _sync_answer(view, ws.id, signal_id)

    # ------------------------------------------------------------ sessions

    add_stream_routes(app, daemon)  # before /api/sessions/{id}: /api/sessions/stream must win

    @app.get("/api/sessions")
    async def list_sessions(request: Request) -> Response:
        q = request.query_params
        allowed = {"workspaceId", "correlationId", "jobName", "signalId", "parentSessionId", "rootSessionId",
                   "status", "since", "until", "limit", "cursor"}
        unknown = [k for k in q if k not in allowed]
        if unknown:
            raise ApiError(400, "invalid_query", f"Unknown query parameter(s): {', '.join(unknown)}")
        statuses = None
        if q.get("status"):
            statuses = [s.strip() for s in q["status"].split(",") if s.strip()]
            bad = [s for s in statuses if s not in STATUSES]
            if bad:
                raise ApiError(400, "invalid_query", f"Unknown status: {', '.join(bad)}",
                               [{"path": "status", "message": f"expected one of {', '.join(sorted(STATUSES))}"}])
        limit = 50
        if q.get("limit") is not None:
            try:
                limit = int(q["limit"])
            except ValueError:
                limit = 0
            if not 1 <= limit <= 500:
                raise ApiError(400, "invalid_query", "limit must be an integer from 1 to 500",
                               [{"path": "limit", "message": "expected 1-500"}])
        for key in ("since", "until"):
            if q.get(key):
                _check_time(key, q[key])
        try:
            sessions, cursor = daemon.store.rm.list_sessions(
                workspace_id=q.get("workspaceId"),
                correlation_id=q.get("correlationId"),
                job_name=q.get("jobName"),
                signal_id=q.get("signalId"),
                parent_session_id=q.get("parentSessionId"),
                root_session_id=q.get("rootSessionId"),
                statuses=statuses,
                since=q.get("since"),
                until=q.get("until"),
                limit=limit,
                cursor=q.get("cursor"),
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_query", f"Invalid cursor: {exc}",
                           [{"path": "cursor", "message": "not a cursor returned by this API"}]) from None
        body: dict[str, Any] = {"sessions": sessions}
        if cursor:
            body["nextCursor"] = cursor
        return json_response(body)

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: str) -> Response:
        view = daemon.store.view(session_id)
        if view is None:
            raise ApiError(404, "session_not_found", f"Session '{session_id}' not found")
        return json_response(view)

    add_bench_routes(app, daemon)
    return app


def _check_time(key: str, value: str) -> None:
    from atlas.sessions.events import parse_iso

    try:
        parse_iso(value)
    except ValueError:
        raise ApiError(400, "invalid_query", f"{key} must be an RFC 3339 time",
                       [{"path": key, "message": "expected e.g. 2026-11-24T10:15:02.123Z"}]) from None


async def _read_body(request: Request, max_body: int) -> bytes:
    """Read the body, refusing more than ATLAS_MAX_BODY from Content-Length or while streaming (413)."""
    length = request.headers.get("content-length")
    too_big = ApiError(413, "body_too_large", f"Request body exceeds {max_body} bytes")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _sync_answer(view: dict[str, Any], workspace_id: str, signal_id: str) -> Response:
    status = view["status"]
    if status == "completed":
        return json_response({
            "message": "Signal completed",
            "status": "completed",
            "workspaceId": workspace_id,
            "signalId": signal_id,
            "sessionId": view["sessionId"],
            "correlationId": view["correlationId"],
            "output": view.get("results") or {},
            "artifactIds": [],
            "summary": (view.get("aiSummary") or {}).get("summary", ""),
        })
    details = {k: view.get(k) for k in ("sessionId", "correlationId", "status", "errorCode", "error")}
    if view.get("errorCode") == "skipped-duplicate":
        raise ApiError(409, "skipped-duplicate", view.get("error") or "Skipped: a session is already running",
                       details)
    code = {"cancelled": "session_cancelled", "skipped": "session_skipped"}.get(status, "session_failed")
    raise ApiError(422, code, f"Session ended {status}" + (f": {view['error']}" if view.get("error") else ""),
                   details)

