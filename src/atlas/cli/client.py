"""How the CLI reaches the daemon (spec §11): URL and token resolution, an httpx client, errors → exit codes.

The CLI talks to atlasd over HTTP only. The URL comes from `--url`, else `ATLAS_URL`, else the `url` recorded in
`$ATLAS_HOME/daemon.json` by `atlas daemon start`, else http://127.0.0.1:8080; the token from `--token`, else
`ATLAS_TOKEN`, and is sent as `Authorization: Bearer …` (never in a query string).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"

# Exit codes (spec §11).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INVALID = 5
EXIT_FAILED = 6
EXIT_CANCELLED = 7
EXIT_SKIPPED = 8
EXIT_TIMEOUT = 9
EXIT_DETACHED = 130

STATUS_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "interrupted": EXIT_FAILED,
               "cancelled": EXIT_CANCELLED, "skipped": EXIT_SKIPPED}


def exit_code_for_status(status: str) -> int:
    """The exit code of a waited run that ended with `status`; 1 for a status that is not terminal."""
    return STATUS_EXIT.get(status, EXIT_ERROR)


def exit_code_for_http(status: int) -> int:
    if status in (400, 413, 422):
        return EXIT_INVALID
    if status in (401, 403, 503):
        return EXIT_UNREACHABLE
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 504:
        return EXIT_TIMEOUT
    return EXIT_ERROR


class CliError(Exception):
    """An error the CLI reports as one line on stderr (and `{"error": …}` on stdout with --json), then exits."""

    def __init__(self, exit_code: int, code: str, message: str, details: Any = None, hint: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.status = status

    def document(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class DaemonError(CliError):
    """The daemon answered with an error document `{"error": {code, message, details?}}`: a CliError that also
    carries the HTTP status, so callers can tell "no such session" (404) from other refusals."""


def atlas_home(home: Path | str | None = None) -> Path:
    if home:
        return Path(home).expanduser().resolve()
    return Path(os.environ.get("ATLAS_HOME") or Path.home() / ".atlas").expanduser().resolve()


def read_daemon_json(home: Path) -> dict[str, Any] | None:
    """`$ATLAS_HOME/daemon.json` (`{url, pid, home}`), or None when absent or unreadable."""
    try:
        info = json.loads((home / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("url"), str) else None


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    source: str  # "--url", "ATLAS_URL", "daemon.json" or "default": named in "cannot reach" errors


def resolve_target(url: str | None = None, token: str | None = None, home: Path | str | None = None) -> Target:
    token = token or os.environ.get("ATLAS_TOKEN") or None
    if url:
        return Target(url.rstrip("/"), token, "--url")
    if os.environ.get("ATLAS_URL"):
        return Target(os.environ["ATLAS_URL"].rstrip("/"), token, "ATLAS_URL")
    info = read_daemon_json(atlas_home(home))
    if info is not None:
        return Target(str(info["url"]).rstrip("/"), token, "daemon.json")
    return Target(DEFAULT_URL, token, "default")


def _reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return str(exc) or type(exc).__name__


def unreachable(target: Target, exc: Exception) -> CliError:
    where = " (from $ATLAS_HOME/daemon.json)" if target.source == "daemon.json" else ""
    return CliError(EXIT_UNREACHABLE, "daemon_unreachable",
                    f"cannot reach the daemon at {target.url}{where}: {_reason(exc)}",
                    hint="start it with: atlas daemon start --detach")


def daemon_error(response: httpx.Response) -> DaemonError:
    """Turn an HTTP error answer into a DaemonError carrying the API's code and message."""
    code, message, details = "http_error", response.reason_phrase or "HTTP error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        details = err.get("details")
    hint = None
    if response.status_code == 401:
        hint = "set ATLAS_TOKEN (or pass --token) to the daemon's token"
    return DaemonError(exit_code_for_http(response.status_code), code, message, details, hint, response.status_code)


class Api:
    """A thin JSON client: every method returns the decoded body or raises CliError/DaemonError."""

    def __init__(self, target: Target, timeout: float = 30.0) -> None:
        self.target = target
        # X-Atlas-Client: the daemon records runs this client triggers as `trigger: cli` (issue #16).
        headers = {"User-Agent": "atlas-cli", "Accept": "application/json", "X-Atlas-Client": "cli"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        self.http = httpx.Client(base_url=target.url, headers=headers, timeout=timeout)

    @property
    def url(self) -> str:
        return self.target.url

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, path, params=clean or None, json=json_body, headers=headers,
                                         timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise unreachable(self.target, exc) from None
        if response.status_code >= 400:
            raise daemon_error(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, params=params, json_body=body, headers=headers).json()

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params).json()

    @contextmanager
    def stream(self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None,
               headers: dict[str, str] | None = None,
               read_timeout: float | None = 60.0) -> Iterator[httpx.Response]:
        """An open streaming response (SSE). HTTP errors raise DaemonError and a failed connect raises the
        "cannot reach" CliError before anything is yielded; transport errors while reading propagate as httpx
        errors, so a follower can tell a dropped stream (reconnect) from a daemon that is not there."""
        timeout = httpx.Timeout(10.0, read=read_timeout)
        all_headers = {"Accept": "text/event-stream", **(headers or {})}
        opened = False
        try:
            with self.http.stream(method, path, params=params, json=json_body, headers=all_headers,
                                  timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise daemon_error(response)
                opened = True
                yield response
        except httpx.TransportError as exc:
            if opened:
                raise
            raise unreachable(self.target, exc) from None

    # ---------------------------------------------------------------- helpers used by several commands

    def list_sessions(self, *, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """`GET /api/sessions`, following `nextCursor` until `limit` sessions (or all, when limit is None)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page_size = 500 if limit is None else max(1, min(500, limit - len(out)))
            page = self.get("/api/sessions", limit=page_size, cursor=cursor, **filters)
            out += page.get("sessions", [])
            cursor = page.get("nextCursor")
            if not cursor or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def resolve_session_id(self, ident: str) -> str:
        """A full session id, or a unique prefix of ≥ 8 characters (spec §11) among recent sessions."""
        ident = ident.strip()
        if len(ident) >= 36:
            return ident
        if len(ident) < 8:
            raise CliError(EXIT_USAGE, "invalid_session_id",
                           f"session id '{ident}' is too short: give the full id or a prefix of 8+ characters")
        matches: list[str] = []
        cursor = None
        for _ in range(20):  # the 10 000 most recent sessions
            page = self.get("/api/sessions", limit=500, cursor=cursor)
            matches += [s["sessionId"] for s in page.get("sessions", []) if s["sessionId"].startswith(ident)]
            cursor = page.get("nextCursor")
            if not cursor or len(matches) > 1:
                break
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CliError(EXIT_USAGE, "ambiguous_session_id",
                           f"session id prefix '{ident}' is ambiguous: {', '.join(m[:13] for m in matches[:5])}…")
        raise CliError(EXIT_NOT_FOUND, "session_not_found", f"Session '{ident}' not found")
