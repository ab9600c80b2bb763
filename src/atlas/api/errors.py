"""How the API answers an error: the one table from error code to HTTP status, and the `{"error": ...}` body.

The domain raises `AtlasError(code, message, details)` without a status (`atlas.errors`); this module is the only
place that knows which status (and which headers, e.g. `Retry-After`) each code gets, and the only one that
builds the error body `{"error": {"code", "message", "details"?}}` (spec §9). The security middleware's refusals
and uvicorn's 408 use the same table and body, so a code has one status whoever answers it.

`/openapi.json` files each operation's error codes under this table's statuses (`atlas.api.openapi.errors`), and
`tests/test_api_errors.py` holds the table to every code the sources raise.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.errors import AtlasError

log = logging.getLogger("atlas.api")

STATUS: dict[str, int] = {
    # the request itself is wrong
    "invalid_json": 400,
    "invalid_body": 400,
    "invalid_query": 400,
    "envelope_required": 400,
    "payload_invalid": 400,
    "payload_too_complex": 400,
    "invalid_idempotency_key": 400,
    "path_not_found": 400,
    "not_a_workspace": 400,
    "client_disconnected": 400,  # nobody reads it: the client left mid-body
    "unauthorized": 401,
    "host_not_allowed": 403,
    "forbidden_origin": 403,
    "forbidden": 403,
    "path_not_allowed": 403,
    "bypass_not_allowed": 403,
    "not_found": 404,
    "workspace_not_found": 404,
    "signal_not_found": 404,
    "no_job_for_signal": 404,
    "session_not_found": 404,
    "correlation_not_found": 404,
    "schedule_not_found": 404,
    "chat_not_found": 404,
    "memory_not_found": 404,
    "memory_entry_not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    # the request conflicts with the state of things
    "workspace_exists": 409,
    "workspace_busy": 409,
    "session_not_active": 409,
    "session_not_finished": 409,
    "chat_busy": 409,
    "idempotency_key_in_progress": 409,
    "skipped-duplicate": 409,
    "cascade_limit_exceeded": 409,
    "body_too_large": 413,
    "workspace_invalid": 422,
    "unknown_parent_session": 422,
    "agent_unavailable": 422,
    "idempotency_key_mismatch": 422,
    "session_failed": 422,
    "session_cancelled": 422,
    "session_skipped": 422,
    "headers_too_large": 431,
    # the daemon cannot serve it
    "internal_error": 500,
    "bus_unavailable": 503,
    "read_model_unavailable": 503,
    "chat_unavailable": 503,
    "shutting_down": 503,
    "wait_timeout": 504,
}
"""Every code the API can answer with, and its status. A code missing here is a bug, answered as a 500."""

HEADERS: dict[str, dict[str, str]] = {
    "idempotency_key_in_progress": {"Retry-After": "1"},
}
"""Fixed headers a code's answer carries (per-request ones, such as `X-Request-Id`, are added where made)."""


def http_status(code: str) -> int:
    return STATUS.get(code, 500)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The API's error shape (spec §9); `details` only when there are some."""
    err: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


def error_response(code: str, message: str, details: Any = None, headers: dict[str, str] | None = None) -> Response:
    """The JSON answer for `code`, with the status and headers of the table (plus `headers`)."""
    status = STATUS.get(code)
    if status is None:
        log.error("error code %r has no HTTP status: answered as 500", code)
        status = 500
    fixed = HEADERS.get(code)
    if fixed is not None:
        headers = {**fixed, **(headers or {})}
    return json_response(error_body(code, message, details), status, headers)


# ---------------------------------------------------------------- exception handlers


async def on_atlas_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AtlasError)
    return error_response(exc.code, exc.message, exc.details)


async def on_http_exception(_: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, static files) in the API's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response("not_found", "No such route")
    if exc.status_code == 405:
        return error_response("method_not_allowed", "Method not allowed on this route")
    return json_response(error_body("http_error", str(exc.detail)), exc.status_code)


async def on_internal_error(_: Request, exc: Exception) -> Response:
    """Anything unexpected: logged under a request id the client also gets, never a stack trace on the wire."""
    request_id = os.urandom(8).hex()
    log.error("internal error %s: %s", request_id, type(exc).__name__, exc_info=exc)
    return error_response("internal_error", "Internal server error", {"requestId": request_id},
                          {"X-Request-Id": request_id})


EXCEPTION_HANDLERS = {
    AtlasError: on_atlas_error,
    HTTPException: on_http_exception,
    Exception: on_internal_error,
}
"""What the app installs (`Starlette(exception_handlers=...)`): every failure answers in the shape above."""
