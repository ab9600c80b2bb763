"""Host allow-list, Origin check, bearer token and CORS (spec §10), as one pure ASGI middleware.

It sits in front of every request, the hot trigger path included, so it is written as a plain ASGI callable
(no BaseHTTPMiddleware, no Request object): the allowed case reads the raw header list once, does a few dict and
set look-ups and hands the untouched `receive` to the app. Everything that can be computed from the settings
(allowed host names, CORS origins, the token bytes, the encoded error bodies) is computed once at start.

Checks run in the order of spec §5.3 step (1), and a rejection answers before the app runs, so before the body is
read, a session is created or an Idempotency-Key is reserved:

1. **Host** (DNS rebinding): a page on a rebound name reaches the daemon with its own name in `Host`, so only
   loopback names, the bind address and `ATLAS_ALLOWED_HOSTS` pass (403 `host_not_allowed`).
2. **CORS preflight**: answered here for `ATLAS_CORS_ORIGINS` (204) and refused for every other origin (403),
   before the token check because browsers never send `Authorization` on a preflight.
3. **Origin**: a browser attaches `Origin` to every cross-origin POST, including the "simple" `text/plain` ones
   that need no preflight, so a state-changing request from a foreign page is refused (403 `forbidden_origin`).
   Requests without `Origin` (CLI, curl, webhooks) pass: they are not a browser acting for someone.
4. **Token**: with `ATLAS_TOKEN` set, everything but `GET /health` and the UI's static files needs
   `Authorization: Bearer <token>` (401 `unauthorized`), from loopback too. The token is compared in constant time
   and never logged. `ATLAS_REQUIRE_TOKEN` makes a token mandatory (`atlasd` refuses to start without one); should
   an app be built with it but no token, this fails closed: every request that needs a token is refused.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas.api.errors import STATUS, error_body
from atlas.config.settings import Settings
from atlas.jsoncodec import dumps

log = logging.getLogger("atlas.api.security")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_READ_ONLY = frozenset({"GET", "HEAD"})
# Positive Host decisions are cached by raw header value; the bound keeps a client cycling through ports or
# case variants of an allowed name from growing the cache without limit (it then just parses again).
_HOST_CACHE_MAX = 256

PREFLIGHT_HEADERS: list[tuple[bytes, bytes]] = [
    (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Atlas-Client"),
    (b"access-control-max-age", b"600"),
]

_MESSAGES = {
    "host_not_allowed": "Host header not allowed: use localhost, 127.0.0.1 or [::1], or add the host name to "
                        "ATLAS_ALLOWED_HOSTS",
    "forbidden_origin": "Cross-origin request refused: the Origin is not this daemon and not in ATLAS_CORS_ORIGINS",
    "unauthorized": "Missing or invalid bearer token: send 'Authorization: Bearer <ATLAS_TOKEN>'",
    "headers_too_large": "Request headers exceed 64 KiB",
}
MAX_HEADER_BYTES = 64 * 1024
#: The Prometheus scrape endpoint (`atlas.api.metrics`): token-guarded like the API, and refused to foreign origins.
METRICS_PATH = "/metrics"


# Encoded once: a refusal costs no JSON encoding. Statuses come from the API's one table (`atlas.api.errors`).
_REFUSALS = {code: (STATUS[code], dumps(error_body(code, message))) for code, message in _MESSAGES.items()}


def host_name(value: str) -> str:
    """The lower-cased host name of a `Host` header, without port or IPv6 brackets; "" if malformed.

    A malformed value (bad port, unclosed bracket) maps to "", which is never allowed, rather than guessing.
    `::1` without brackets is accepted as a bare IPv6 address because the brief allows that spelling.
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:] if end != -1 else "x"
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return ""
        return value[1:end]
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name if port.isdigit() else ""
    return value


def allowed_host_names(settings: Settings) -> frozenset[str]:
    """Loopback names, the bind address unless it is a wildcard, and `ATLAS_ALLOWED_HOSTS` (ports ignored)."""
    names = set(LOOPBACK_NAMES)
    bind = host_name(settings.host) if settings.host.count(":") <= 1 else settings.host.strip("[]").lower()
    if bind not in _WILDCARD_BINDS:
        names.add(bind)
    names.update(h for h in (host_name(x) for x in settings.allowed_hosts) if h)
    return frozenset(names)


def _cors_origins(origins: Iterable[str]) -> frozenset[bytes]:
    """Listed origins as browsers serialise them (lower case, no trailing slash); `null` and `*` are never CORS
    origins: `null` is what sandboxed and file pages send, and a wildcard would undo the Origin check."""
    out = {o.strip().rstrip("/").lower().encode("latin-1") for o in origins}
    return frozenset(o for o in out if o and o not in (b"null", b"*"))


class SecurityMiddleware:
    """The spec §10 checks in front of the app; see the module docstring for the order and the reasons."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed_hosts = allowed_host_names(settings)
        self.cors = _cors_origins(settings.cors_origins)
        self.token = settings.token.encode() if settings.token else None
        self.token_required = self.token is not None or settings.require_token
        self._host_ok: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # lifespan
            await self.app(scope, receive, send)
            return
        raw_headers = scope["headers"]
        if len(raw_headers) > 100 or sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
            await self._deny(scope, send, "headers_too_large")
            return
        headers = dict(raw_headers)  # ASGI names are lower-case bytes; C-speed for a handful of headers
        host = headers.get(b"host")
        if host is None or not self._host_allowed(host):
            await self._deny(scope, send, "host_not_allowed")
            return
        method: str = scope.get("method", "GET")
        origin = headers.get(b"origin")
        listed = origin is not None and origin in self.cors
        if origin is not None:
            if method == "OPTIONS" and b"access-control-request-method" in headers:
                if listed:
                    await _respond(send, 204, b"", [*_cors_headers(origin), *PREFLIGHT_HEADERS])
                else:
                    await self._deny(scope, send, "forbidden_origin")
                return
            # A WebSocket handshake is a GET that browsers send cross-origin without preflight: treat it as
            # state-changing so a foreign page cannot open one. `/metrics` too: no page has a reason to read it.
            guarded = method in _STATE_CHANGING or kind == "websocket" or scope["path"] == METRICS_PATH
            if guarded and not listed and (
                origin == b"null" or origin.lower() != _own_origin(scope, host)
                or headers.get(b"sec-fetch-site") == b"cross-site"
            ):
                await self._deny(scope, send, "forbidden_origin")
                return
        elif method in _STATE_CHANGING and headers.get(b"sec-fetch-site") == b"cross-site":
            await self._deny(scope, send, "forbidden_origin")
            return
        if self.token_required and not self._open(kind, method, scope["path"]):
            auth = headers.get(b"authorization")
            if auth is None or self.token is None or auth[:7].lower() != b"bearer " or \
                    not hmac.compare_digest(auth[7:].strip(), self.token):
                await self._deny(scope, send, "unauthorized", origin if listed else None)
                return
        if listed:
            assert origin is not None
            await self.app(scope, receive, _with_cors(send, origin))
        else:
            await self.app(scope, receive, send)

    def _host_allowed(self, raw: bytes) -> bool:
        if raw in self._host_ok:
            return True
        ok = host_name(raw.decode("latin-1")) in self.allowed_hosts
        if ok and len(self._host_ok) < _HOST_CACHE_MAX:
            self._host_ok[raw] = True
        return ok

    @staticmethod
    def _open(kind: str, method: str, path: str) -> bool:
        """`GET /health` and the UI's static files (GET/HEAD outside `/api`, `/openapi.json` and `/metrics`) need no
        token: the browser loads the UI before it can ask for the token, and monitoring probes /health. `/metrics`
        tells what runs and how much: a scraper sends the token like any API client."""
        return (kind == "http" and method in _READ_ONLY and not path.startswith("/api") and path != "/openapi.json"
                and path != METRICS_PATH)

    @staticmethod
    async def _deny(scope: Scope, send: Send, code: str, cors_origin: bytes | None = None) -> None:
        if scope["type"] == "websocket":
            # Closing before accept makes the server refuse the handshake with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": code})
            return
        status, body = _REFUSALS[code]
        extra = _cors_headers(cors_origin) if cors_origin is not None else []
        if status == 401:
            extra.append((b"www-authenticate", b"Bearer"))
        await _respond(send, status, body, [(b"content-type", b"application/json"), *extra])


def _own_origin(scope: Scope, host: bytes) -> bytes:
    """`<scheme>://<Host>` of this very request: what a page served by the daemon itself sends as `Origin`.

    The scheme is the request's own (`http` unless a trusted proxy says otherwise; a WebSocket's `ws` maps to
    `http`), and host:port must match exactly, so a page on another loopback port is a foreign origin.
    """
    scheme = scope.get("scheme", "http")
    if scheme in ("ws", "wss"):
        scheme = "http" if scheme == "ws" else "https"
    return scheme.encode() + b"://" + host.lower()


def _cors_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]


def _with_cors(send: Send, origin: bytes) -> Send:
    """Wrap `send` so the response start carries the CORS headers for a listed origin."""
    extra = _cors_headers(origin)

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with_cors


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def log_protections(settings: Settings) -> None:
    """Say at start which protections are on (never the token)."""
    if settings.require_token and not settings.token:
        log.error("ATLAS_REQUIRE_TOKEN is set but ATLAS_TOKEN is not: every API request will be refused")
    log.info("API token %s; CORS %s", "required" if settings.token or settings.require_token else "not required",
             "for " + ", ".join(sorted(o.decode() for o in _cors_origins(settings.cors_origins)))
             if settings.cors_origins else "off")
