"""Workspace routes (spec §9): list, add (or reload), show and remove workspaces; their jobs and signals.

Loading and registering is the runtime's (`Daemon.add_workspace`: a worker thread, `ATLAS_WORKSPACE_ROOTS`, the
WORKSPACES record); these routes check the request, call it and shape the answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response, read_body
from atlas.api.state import daemon_of
from atlas.errors import AtlasError

if TYPE_CHECKING:
    from atlas.runtime.workspaces import Workspace

TRUE_VALUES = frozenset({"true", "1", "yes"})


def workspace_of(request: Request) -> Workspace:
    """The path's `{workspace_id}`, or 404 `workspace_not_found`."""
    workspace_id: str = request.path_params["workspace_id"]
    ws = daemon_of(request).workspaces.get(workspace_id)
    if ws is None:
        raise AtlasError("workspace_not_found", f"Workspace '{workspace_id}' not found")
    return ws


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def list_workspaces(request: Request) -> Response:
    return json_response([ws.entry() for ws in daemon_of(request).workspaces.all()])


async def add_workspace(request: Request) -> Response:
    """201 for a new workspace, 200 when the same path is loaded again; the body is read as JSON whatever its
    Content-Type."""
    daemon = daemon_of(request)
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
    ws, created = await daemon.add_workspace(Path(path), daemon.settings.workspace_roots)
    entry = ws.entry()
    out = {k: entry[k] for k in ("id", "name", "description", "status", "path", "createdAt", "lastSeen")}
    return json_response({**out, "created": created}, 201 if created else 200)


async def show_workspace(request: Request) -> Response:
    ws = workspace_of(request)
    config = ws.config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json_response({**ws.entry(), "config": config})


async def remove_workspace(request: Request) -> Response:
    """409 `workspace_busy` while it has live sessions, unless `?force=true`, which cancels them first."""
    daemon = daemon_of(request)
    ws = workspace_of(request)
    force = request.query_params.get("force", "").lower() in TRUE_VALUES
    active = [v["sessionId"] for v in daemon.store.live_sessions() if v.get("workspaceId") == ws.id]
    if active and not force:
        raise AtlasError("workspace_busy", f"Workspace '{ws.id}' has active sessions", {"activeSessionIds": active})
    for sid in active:
        await daemon.cancel(sid, "cancelled", "workspace_removed", f"Workspace '{ws.id}' was removed")
    await daemon.remove_workspace(ws.id)
    return json_response({"message": f"Workspace '{ws.id}' removed", "id": ws.id})


async def list_jobs(request: Request) -> Response:
    return json_response(workspace_of(request).jobs_listing())


async def list_signals(request: Request) -> Response:
    ws = workspace_of(request)
    out = []
    for sig_id, sig in ws.config.signals.items():
        spec = {"id": sig_id, **sig.model_dump(mode="json", by_alias=True, exclude_none=True)}
        # A signal triggers at most one job (checked at load): a look-up, not a scan of every job per signal,
        # which made this route quadratic and held the event loop for tens of seconds on a 1 MiB workspace.
        jobs = [ws.job_for_signal[sig_id]] if sig_id in ws.job_for_signal else []
        out.append({"name": sig_id, "signal": spec, "jobs": jobs})
    return json_response({"signals": out})
