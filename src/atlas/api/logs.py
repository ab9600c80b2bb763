"""`GET /api/sessions/{id}/logs`: what a session's steps wrote, kept with the run (issue #16, item 1).

A page is `{lines: [{ts, stepNumber, stream, text}], nextCursor, ended}`, read from the session's step log
(`atlas.bus.steplogs`) after `?after=<cursor>`; `nextCursor` is always given (a reader tailing a running session
asks again with it), and `ended` says that the session has ended and the page reached the end of its log, so
nothing will ever follow.

With `?follow=true` the same lines come as Server-Sent Events: `id: <cursor>` + `event: logs` + `data: {lines,
nextCursor}` frames, `: keep-alive` comments, and `event: end` `{status}` once the session has ended and every line
was sent. The runner stores a step's last lines before its `step:complete` (`atlas.runtime.steplogs`), so a
follower that saw the session end and then read to the end of the log has everything. New batches are noticed
through a subscription on the log's subject made before the first read, used only as a wake-up: each wake reads
the stream after the cursor, so no line is lost or repeated at the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from atlas.api.responses import json_response
from atlas.api.state import daemon_of, streams_of
from atlas.api.streams import KEEPALIVE_FRAME, OPEN_FRAME, SSE_HEADERS, Feed, StreamHub
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps
from atlas.sessions.reducer import is_terminal

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "session_logs"]

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A cursor of the step log (`atlas.bus.steplogs`, which the API reaches only through the daemon).
CURSOR = re.compile(r"[0-9]{1,19}\.[0-9]{1,9}")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_FOLLOW_PAGE = 1000


def _invalid(path: str, message: str) -> AtlasError:
    return AtlasError("invalid_query", message, [{"path": path, "message": message}])


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    limit = int(raw) if re.fullmatch(r"[0-9]{1,5}", raw) else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _invalid("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _cursor(request: Request, follow: bool) -> str | None:
    """`?after=`, or for a follow `Last-Event-ID` (what an EventSource sends on reconnect), which wins."""
    raw, name = request.query_params.get("after"), "after"
    header = request.headers.get("last-event-id")
    if follow and header and header.strip():
        raw, name = header.strip(), "Last-Event-ID"
    if raw and not CURSOR.fullmatch(raw):
        raise _invalid(name, f"{name} must be a nextCursor of this endpoint")
    return raw or None


def _follow(raw: str | None) -> bool:
    if raw is None or raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise _invalid("follow", "follow must be true or false")


async def _session_status(daemon: Daemon, session_id: str) -> str:
    """The session's status, or 404 `session_not_found` (a session another daemon accepted is rebuilt)."""
    view = daemon.store.view(session_id) if SESSION_ID.fullmatch(session_id) else None
    if view is None and SESSION_ID.fullmatch(session_id):
        view = await daemon.rebuild_view(session_id)
    if view is None:
        raise AtlasError("session_not_found", f"Session '{session_id}' not found")
    return str(view["status"])


async def session_logs(request: Request) -> Response:
    """One page of the session's step log, or with `?follow=true` the log as SSE until the session ends."""
    daemon = daemon_of(request)
    session_id: str = request.path_params["session_id"]
    follow = _follow(request.query_params.get("follow"))
    cursor = _cursor(request, follow)
    limit = _limit(request.query_params.get("limit"))
    status = await _session_status(daemon, session_id)
    if follow:
        return await _follow_response(streams_of(request), daemon, session_id, cursor)
    page = await daemon.step_logs.read(session_id, cursor, limit)
    return json_response({"lines": page.lines, "nextCursor": page.next_cursor,
                          "ended": is_terminal(status) and page.at_end})


# ---------------------------------------------------------------- follow


def _logs_frame(lines: list[dict[str, Any]], next_cursor: str) -> bytes:
    data = dumps({"lines": lines, "nextCursor": next_cursor})
    return b"id: %s\nevent: logs\ndata: %s\n\n" % (next_cursor.encode(), data)


class _LogFollow:
    """The live side of one follow: a wake-up feed (ended by `StreamHub.close_all` on shutdown), the log's
    subscription and a wait for the session's end; released exactly once, however the response ends."""

    def __init__(self, hub: StreamHub, daemon: Daemon, session_id: str) -> None:
        self.hub, self.daemon, self.session_id = hub, daemon, session_id
        self.feed = Feed(hub)
        self.sub: Any = None
        self.end: asyncio.Future[dict[str, Any]] | None = None

    async def start(self) -> None:
        self.hub._feeds.add(self.feed)  # so that shutdown's close_all ends this stream too
        self.hub.opened += 1
        self.sub = await self.daemon.step_logs.follow(self.session_id, lambda: self.feed.put_chunk(b""))
        self.end = asyncio.ensure_future(self.daemon.store.wait_terminal(self.session_id))
        self.end.add_done_callback(lambda _: self.feed.put_chunk(b""))

    def ended(self) -> str | None:
        """The session's final status once it has ended (any failure to wait counts as the end, too)."""
        if self.end is None or not self.end.done():
            return None
        if self.end.cancelled() or self.end.exception() is not None:
            return "unknown"
        return str(self.end.result().get("status"))

    async def release(self) -> None:
        self.hub._feeds.discard(self.feed)
        self.feed.close()
        if self.end is not None:
            self.end.cancel()
        if self.sub is not None:
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


async def _frames(live: _LogFollow, cursor: str | None) -> AsyncGenerator[bytes, None]:
    daemon, sid, feed = live.daemon, live.session_id, live.feed
    yield OPEN_FRAME
    try:
        while not feed.closed:
            feed.items.clear()
            status = live.ended()  # read before the log: lines stored before the end are then all readable
            while True:
                page = await daemon.step_logs.read(sid, cursor, _FOLLOW_PAGE)
                if page.lines:
                    cursor = page.next_cursor
                    yield _logs_frame(page.lines, page.next_cursor)
                if page.at_end:
                    break
            if status is not None:
                yield b"event: end\ndata: %s\n\n" % dumps({"status": status})
                return
            if not await feed.wait(live.hub.settings.keepalive_s):
                yield KEEPALIVE_FRAME
    except AtlasError:  # the bus went away mid-stream: close; the client reconnects with Last-Event-ID
        return


class _FollowResponse(StreamingResponse):
    """Releases the follow's subscription however the response ends (a client gone cancels the body's task)."""

    def __init__(self, live: _LogFollow, body: AsyncGenerator[bytes, None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self._live, self._body = live, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._live.release()
                with contextlib.suppress(Exception):
                    await self._body.aclose()


async def _follow_response(hub: StreamHub, daemon: Daemon, session_id: str, cursor: str | None) -> Response:
    live = _LogFollow(hub, daemon, session_id)
    try:
        await live.start()
    except BaseException:
        await live.release()
        raise
    return _FollowResponse(live, _frames(live, cursor))
