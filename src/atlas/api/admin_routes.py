"""Operator routes (issue #15): `POST /api/admin/rebuild-readmodel`.

They sit under `/api` like every other route, so the security middleware (`atlas.api.security`) asks for the
bearer token whenever `ATLAS_TOKEN` is set, and refuses a foreign `Origin`: nothing special is needed here.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.api.state import daemon_of


async def rebuild_readmodel(request: Request) -> Response:
    """Refill the read model from the JetStream log (`Materializer.rebuild_all`): idempotent, so an operator can run
    it on an empty database (a move from SQLite to PostgreSQL), a damaged one, or just to check (`written` 0)."""
    daemon = daemon_of(request)
    counts = await daemon.materializer.rebuild_all()
    return json_response({**counts, "readModel": "postgresql" if daemon.settings.database_url else "sqlite"})
