"""`POST /api/sessions/{session_id}/rerun` (issue #16): run a finished session's job again, with its input.

A re-run is a new root trigger of the same workspace signal, accepted like a nowait trigger (same checks, same 202
body, a new sessionId and correlationId) and recorded with `trigger: rerun` and `rerunOf: <old sessionId>`, so the
new run links back to the one it repeats. The input is the original `payload` (kept on the view from
`session:queued`) unless the body brings another; either way it is checked against the signal's schema as it is
now, since the workspace may have changed since the first run.

What is not carried over, on purpose: a webhook's raw body and headers (never kept past the envelope), the
envelope's `skipStates` (a control of the first attempt, not its input) and the parent of a cascaded child (the
parent is finished; the re-run is a root of its own).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.body import parse_json
from atlas.api.responses import json_response, read_body
from atlas.api.state import daemon_of
from atlas.api.trigger import accepted_body
from atlas.errors import AtlasError
from atlas.runtime.accept import TriggerRequest
from atlas.sessions.reducer import is_terminal

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BODY_KEYS = frozenset({"payload"})


def rerun_payload(raw: bytes, original: Any) -> Any:
    """The payload of the re-run: the body's `payload` object, or `original` for an empty body, `{}` or a null
    `payload`. Anything else is refused rather than guessed at (a re-run has no webhook mode)."""
    if not raw.strip():
        return original
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise AtlasError("invalid_body", "The body must be a JSON object: {\"payload\"?: {...}}")
    unknown = sorted(set(body) - BODY_KEYS)
    details = [{"path": key, "message": "unknown key (a re-run takes only `payload`)"} for key in unknown]
    payload = body.get("payload")
    if payload is not None and not isinstance(payload, dict):
        details.append({"path": "payload", "message": "must be an object"})
    if details:
        raise AtlasError("invalid_body", "Invalid re-run body", details)
    return original if payload is None else payload


async def _finished_view(request: Request, session_id: str) -> dict[str, Any]:
    """The session's view (rebuilt from its log when this daemon has not seen it yet), or 404; 409 while it runs."""
    daemon = daemon_of(request)
    view = daemon.store.view(session_id) if SESSION_ID.fullmatch(session_id) else None
    if view is None and SESSION_ID.fullmatch(session_id):
        view = await daemon.rebuild_view(session_id)
    if view is None:
        raise AtlasError("session_not_found", f"Session '{session_id}' not found")
    status = view.get("status")
    if not is_terminal(status):
        raise AtlasError("session_not_finished",
                         f"Session '{session_id}' is still {status}: wait for its end (or cancel it) to re-run it",
                         {"status": status})
    return view


async def rerun_session(request: Request) -> Response:
    """202 like a nowait trigger; the route checks the old session first (404, 409), then the body, then everything
    a trigger checks (workspace and signal still there, payload against the schema), before anything is created."""
    daemon = daemon_of(request)
    session_id: str = request.path_params["session_id"]
    view = await _finished_view(request, session_id)
    raw = await read_body(request, daemon.settings.max_body)
    payload = rerun_payload(raw, view.get("payload"))
    req = TriggerRequest(workspace_id=view["workspaceId"], signal_id=view["signalId"], payload=payload,
                         trigger="rerun", rerun_of=view["sessionId"])
    try:
        validated = daemon.accept.validate(req)
    except AtlasError as exc:
        if exc.code == "payload_invalid":
            raise
        # The workspace, its signal or the job's agents changed since the first run: say so in the message.
        raise AtlasError(exc.code, f"Cannot re-run session '{session_id}': {exc.message}", exc.details) from None
    accepted = await daemon.accept.accept(req, validated)
    body = accepted_body(accepted.workspace_id, accepted.signal_id, accepted.session_id, accepted.correlation_id,
                         False)
    return json_response(body, 202, {"Location": f"/api/sessions/{accepted.session_id}"})
