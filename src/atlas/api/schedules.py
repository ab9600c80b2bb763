"""Schedule routes (spec §5.6): list the cron schedules, pause and resume them.

The pause flag lives in the cluster's `CRON_STATE` bucket, not in this daemon, so a schedule paused through any
daemon stays paused on all of them and across restarts. Errors are `AtlasError`s, which the app renders as
``{"error": {"code", "message"}}`` like every other route.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.api.state import daemon_of


async def list_schedules(request: Request) -> Response:
    """Every cron schedule with its next fire time and last result."""
    return json_response({"schedules": await daemon_of(request).scheduler.entries()})


async def pause_schedule(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume_schedule(request: Request) -> Response:
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    """404 `schedule_not_found` for no such workspace or schedule signal (raised by the scheduler)."""
    params = request.path_params
    return json_response(await daemon_of(request).scheduler.set_paused(params["workspace_id"], params["signal_id"],
                                                                       paused))
