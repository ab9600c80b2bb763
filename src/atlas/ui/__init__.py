"""The web UI: static ES modules, CSS and HTML served by the daemon itself (spec §12).

No build step and no second server: ``static/index.html`` loads ``/assets/js/main.js`` as a native ES module, and
everything else is fetched from the same origin as the API. Two pieces are wired into the API's app:

- ``/assets/…`` is a ``StaticFiles`` mount of ``static/assets`` (ETag and Last-Modified, revalidated on every
  load with ``Cache-Control: no-cache`` so an upgraded daemon never runs stale modules).
- Every other ``GET``/``HEAD`` that no route matched gets ``index.html``, so deep links such as
  ``/sessions/<sid>`` work on reload. The fallback is the router's *default* app, which only runs when no route
  matched at all: it never shadows a route, never turns a wrong method into 405 for an unknown path, and it
  hands ``/api``, ``/api/…``, ``/health``, ``/openapi.json`` and ``/assets/…`` back to the JSON 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PREFIX = "/assets"

#: Paths the UI fallback must never answer: they belong to the API (JSON 404 for unknown routes).
_RESERVED_EXACT = frozenset({"/api", "/health", "/openapi.json", ASSETS_PREFIX})
_RESERVED_PREFIXES = ("/api/", ASSETS_PREFIX + "/")

#: Everything the UI needs comes from the daemon itself; nothing is loaded from the internet (spec §12).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_reserved(path: str) -> bool:
    """True for paths owned by the API (or by the asset mount), which the index fallback must leave alone."""
    return path in _RESERVED_EXACT or path.startswith(_RESERVED_PREFIXES)


class _Assets(StaticFiles):
    """StaticFiles that asks browsers to revalidate (cheap 304s thanks to the ETag) and forbids sniffing."""

    def file_response(self, *args: object, **kwargs: object) -> Response:
        response = super().file_response(*args, **kwargs)  # type: ignore[arg-type]
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


class _IndexFallback:
    """The router's default app: ``index.html`` for unmatched UI paths, the original 404 for everything else."""

    def __init__(self, not_found: ASGIApp, index: Path) -> None:
        self.not_found = not_found
        self.index = index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD")
                or is_reserved(scope.get("path", ""))):
            await self.not_found(scope, receive, send)
            return
        body = self.index.read_bytes()  # tiny, and read per request so an edited file shows on reload
        response = Response(b"" if scope["method"] == "HEAD" else body, media_type="text/html",
                            headers={**_PAGE_HEADERS, "Content-Length": str(len(body))})
        await response(scope, receive, send)


def mount_ui(app: Starlette) -> None:
    """Serve the UI at ``/``: the asset mount plus the ``index.html`` fallback (call after every API route)."""
    # Module scripts need a JavaScript MIME type; don't trust the host's mime.types for it.
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("text/css", ".css")
    mimetypes.add_type("image/svg+xml", ".svg")
    app.mount(ASSETS_PREFIX, _Assets(directory=STATIC_DIR / "assets"), name="ui-assets")
    app.router.default = _IndexFallback(app.router.default, STATIC_DIR / "index.html")
