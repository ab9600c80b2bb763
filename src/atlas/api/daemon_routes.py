"""Daemon routes (spec §9): `GET /health`, `GET /api/daemon/status` and `POST /api/daemon/shutdown`."""

from __future__ import annotations

import asyncio
import os
import resource

from starlette.requests import Request
from starlette.responses import Response

from atlas import __version__
from atlas.api.responses import json_response
from atlas.api.state import daemon_of
from atlas.errors import AtlasError
from atlas.sessions.events import now_iso


async def health(request: Request) -> Response:
    """Liveness and readiness, open without a token.

    `bus` is "degraded" while the bus cannot take writes (disconnected, or its store's disk is full): triggers get
    503 then, so a running daemon reports `degraded` rather than `ok` (issue #19, bug 9). So is the daemon while
    its read model cannot be written (a full disk) or, shared, reached (PostgreSQL down, issue #15).
    """
    daemon = daemon_of(request)
    bus = daemon.bus_health.status
    read_model = daemon.store.health()
    status = daemon.status
    return json_response({
        "status": "degraded" if status == "ok" and (bus != "ok" or not read_model["available"]) else status,
        "bus": bus,
        "readModel": read_model,
        "uptime": daemon.uptime,
        "timestamp": now_iso(),
        "version": __version__,
        "activeWorkspaces": len(daemon.workspaces.all()),
        "activeSessions": len(daemon.runs),
    })


async def daemon_status(request: Request) -> Response:
    daemon = daemon_of(request)
    counts = daemon.store.rm.count_by_status()
    return json_response({
        "status": "running",
        "version": __version__,
        "pid": os.getpid(),
        "daemonId": daemon.daemon_id,
        "startedAt": daemon.started_at,
        "uptime": daemon.uptime,
        "bind": f"{daemon.settings.host}:{daemon.settings.port}",
        "nats": {"mode": daemon.nats_mode, "url": redact_url(daemon.nats_url)},
        "sessions": {"queued": counts.get("queued", 0), "active": counts.get("active", 0)},
        "workspaces": len(daemon.workspaces.all()),
        "memoryUsage": {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
        "cluster": await daemon.cluster(),
        **({"traceUrlTemplate": daemon.settings.trace_url_template} if daemon.settings.trace_url_template else {}),
    })


async def daemon_shutdown(request: Request) -> Response:
    """Like SIGTERM, for daemons `atlasd` started (which set `request_shutdown`); answered before the stop begins."""
    daemon = daemon_of(request)
    if daemon.request_shutdown is None:
        raise AtlasError("forbidden", "This daemon cannot be shut down over HTTP")
    asyncio.get_running_loop().call_later(0.05, daemon.request_shutdown)
    return json_response({"message": "Daemon shutdown initiated"})


def redact_url(url: str) -> str:
    """NATS URLs are shown without user info (credentials or tokens)."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.partition("://")
        out.append(scheme + sep + rest.split("@", 1)[-1] if sep else part)
    return ",".join(out)
