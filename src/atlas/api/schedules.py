"""Schedule routes (spec §5.6): list the cron schedules, pause and resume them.

The pause flag lives in the cluster's `CRON_STATE` bucket, not in this daemon, so a schedule paused through any
daemon stays paused on all of them and across restarts. Errors are `AtlasError`s, which the app renders as
``{"error": {"code", "message"}}`` like every other route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.responses import Response

from atlas.api.responses import json_response

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "`schedule_not_found`: no such workspace or schedule signal"},
}


def add_schedule_routes(app: FastAPI, daemon: Daemon) -> None:
    """Add GET /api/schedules and POST /api/schedules/{ws}/{sig}/pause|resume."""

    @app.get("/api/schedules", summary="List cron schedules with next fire time and last result")
    async def list_schedules() -> Response:
        return json_response({"schedules": await daemon.scheduler.entries()})

    @app.post("/api/schedules/{workspace_id}/{signal_id}/pause", summary="Pause a cron schedule",
              responses=_NOT_FOUND)
    async def pause_schedule(workspace_id: str, signal_id: str) -> Response:
        return json_response(await daemon.scheduler.set_paused(workspace_id, signal_id, True))

    @app.post("/api/schedules/{workspace_id}/{signal_id}/resume", summary="Resume a paused cron schedule",
              responses=_NOT_FOUND)
    async def resume_schedule(workspace_id: str, signal_id: str) -> Response:
        return json_response(await daemon.scheduler.set_paused(workspace_id, signal_id, False))
