"""Session routes (spec §9): the filtered list, one session's view, its children, and cancellation.

Reads come from the read model; a session accepted by another daemon and not materialised here yet is rebuilt
from its log on demand (`Daemon.rebuild_view`). The live streams are `atlas.api.streams`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.api.state import daemon_of
from atlas.errors import AtlasError
from atlas.sessions.readmodel import normalize_timestamp
from atlas.sessions.reducer import STATUSES, is_terminal

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CANCEL_WAIT_S = 5.0
"""A DELETE waits this long for the session to end (200), then answers 202 with `cancelRequested`."""


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


def _prefix(raw: str | None) -> str | None:
    """`sessionIdPrefix`: the start of a session id, as the CLI and the UI accept short ids (issue #16)."""
    if not raw:
        return None
    if not SESSION_ID.fullmatch(raw):
        raise _invalid("sessionIdPrefix", "sessionIdPrefix must be 1-64 letters, digits, '_' or '-'")
    return raw


def _not_found(session_id: str) -> AtlasError:
    return AtlasError("session_not_found", f"Session '{session_id}' not found")


def _view(request: Request) -> dict[str, Any]:
    """The read model's view of the path's `{session_id}`, or 404."""
    session_id: str = request.path_params["session_id"]
    view = daemon_of(request).store.view(session_id) if SESSION_ID.fullmatch(session_id) else None
    if view is None:
        raise _not_found(session_id)
    return view


async def list_sessions(request: Request) -> Response:
    """Filtered, newest first, paged by an opaque cursor; a weak ETag over the exact bytes keeps UI polling cheap
    (spec §7.2): an unchanged list answers 304. Unknown query parameters are ignored, as the reference does (spec
    Revision 2: a client written for it may send its own); a known one with a bad value is still a 400."""
    q = request.query_params
    since, until = _time("since", q.get("since")), _time("until", q.get("until"))
    try:
        sessions, cursor = daemon_of(request).store.rm.list_sessions(
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
            session_id_prefix=_prefix(q.get("sessionIdPrefix")),
        )
    except ValueError:
        raise _invalid("cursor", "Invalid cursor: use the nextCursor of a previous page") from None
    body: dict[str, Any] = {"sessions": sessions}
    if cursor:
        body["nextCursor"] = cursor
    response = json_response(body)
    etag = 'W/"' + hashlib.blake2b(response.body, digest_size=12).hexdigest() + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return response


async def get_session(request: Request) -> Response:
    daemon = daemon_of(request)
    session_id: str = request.path_params["session_id"]
    if not SESSION_ID.fullmatch(session_id):  # also keeps wildcards out of the subject lookup below
        raise _not_found(session_id)
    view = daemon.store.view(session_id)
    if view is None:
        view = await daemon.rebuild_view(session_id)  # accepted by another daemon, not materialised yet
    if view is None:
        raise _not_found(session_id)
    return json_response(view)


async def session_children(request: Request) -> Response:
    _view(request)
    return json_response({"sessions": daemon_of(request).store.rm.children(request.path_params["session_id"])})


async def cancel_session(request: Request) -> Response:
    """Cancel the session and its live descendants; 200 once it ended, 202 if it is still ending after a wait."""
    daemon = daemon_of(request)
    view = _view(request)
    session_id: str = request.path_params["session_id"]
    if is_terminal(view["status"]):
        raise AtlasError("session_not_active", f"Session '{session_id}' already ended {view['status']}",
                         {"status": view["status"]})
    cancelled = await daemon.cancel_tree(session_id, "cancelled_by_user", "Cancelled by user")
    body = {"message": f"Session {session_id} cancelled", "sessionId": session_id,
            "workspaceId": view["workspaceId"], "cancelled": cancelled}
    try:
        final = await daemon.store.wait_terminal(session_id, CANCEL_WAIT_S)
    except TimeoutError:
        current = daemon.store.view(session_id) or view
        return json_response({**body, "status": current["status"], "cancelRequested": True}, 202)
    return json_response({**body, "status": final["status"]})
