"""The HTTP request span of the routes that accept triggers (issue #18): the first span of a trigger's trace.

Only the routes that start sessions are traced (a trigger, a re-run): their span is the parent of the session's,
through the `traceparent` the accept pipeline stores in the envelope, and it joins the caller's trace when the
request carries a `traceparent` header. Reads (lists, views, streams) would only add noise to a trace backend.
With tracing off the wrapper costs one attribute check per request.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.errors import http_status
from atlas.api.state import daemon_of
from atlas.errors import AtlasError
from atlas.observability.tracing import ERROR_CODE, mark_error

Endpoint = Callable[[Request], Awaitable[Response]]


def traced(endpoint: Endpoint, method: str, route: str) -> Endpoint:
    """`endpoint` inside a server span named `{method} {route}` (the OpenTelemetry HTTP convention)."""
    name = f"{method} {route}"

    @functools.wraps(endpoint)
    async def handler(request: Request) -> Response:
        tracing = daemon_of(request).tracing
        if not tracing.enabled:
            return await endpoint(request)
        # The path from the ASGI scope, not `request.url.path`: that builds the whole URL (its host header parsed,
        # the URL joined and split again) on every traced trigger, for the same path.
        attributes = {"http.request.method": method, "http.route": route, "url.path": request.scope["path"]}
        with tracing.server_span(name, request.headers, attributes) as span:
            try:
                response = await endpoint(request)
            except AtlasError as exc:
                span.set_attribute(ERROR_CODE, exc.code)
                span.set_attribute("http.response.status_code", http_status(exc.code))
                mark_error(span, exc.code)
                raise
            except Exception:
                mark_error(span, "internal_error")
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    return handler
