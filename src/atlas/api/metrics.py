"""`GET /metrics` (issue #18): the daemon's Prometheus metrics (`atlas.observability.metrics`).

Behind the same checks as the API (`atlas.api.security`): Host allow-list, bearer token when one is configured
(a scraper sends it with `authorization.credentials`), and any foreign `Origin` refused, since no browser page
has a reason to read it. Each daemon of a cluster serves its own; Prometheus scrapes each one as a target.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.state import daemon_of


async def metrics(request: Request) -> Response:
    daemon = daemon_of(request)
    accept = request.headers.get("accept", "")
    if daemon.store.shared:  # the sessions gauge asks PostgreSQL: never wait on the network on the loop
        body, content_type = await asyncio.to_thread(daemon.metrics.render, accept)
    else:
        body, content_type = daemon.metrics.render(accept)
    return Response(body, headers={"content-type": content_type})
