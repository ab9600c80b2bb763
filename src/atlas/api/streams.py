"""SSE session streams (spec §9 "Per-session stream" and "Tree stream (A)"; §13 items 5, 40, 41).

Both streams replay durable events from JetStream and then follow live ones, and neither may lose or repeat an
event at the seam between the two phases. They share one recipe:

1. **Subscribe before replaying.** The handler registers a `SessionStore` listener (it sees this daemon's own
   writes and the events the materialiser brings in from other daemons) and a core-NATS subscription for
   ephemeral chunks *before* the first read of the bus, so anything written after that read is already being
   collected.
2. **Replay from the bus** (the daemon's `SessionLog`). SESSION_EVENTS is always ahead of the store: the writer
   appends to JetStream before it applies locally, and the materialiser only applies what the stream holds. So an
   event the listener reports is always readable from the bus, and the replay plus the listener cover everything.
3. **Follow with dedupe.** The per-session stream sends live events straight from the listener, skipping any
   `seq` it already sent; a gap (or an overflow, below) sends it back to the bus to fill in. The tree stream needs
   SESSION_EVENTS stream sequences as frame ids, which the listener does not carry, so there the listener is only
   a wake-up: each wake re-reads, from the bus, what is new for every unfinished member after the last stream
   sequence read for it, and sends it merged in stream order.

**Slow clients.** Every stream owns one bounded hand-off queue (`StreamSettings.queue_capacity` items) between the
synchronous callbacks and its generator. The generator blocks in `send` while a client does not read (uvicorn
applies transport back-pressure), so a slow client can pin at most that queue, one page of bus reads (about
1 MiB; 8 MiB across a whole tree) and the transport's high-water mark. When the queue is full, a chunk is dropped
(spec §3.3 lets chunks go under load) and a durable event clears the queue and marks the stream for a *resync*:
the generator re-reads from the bus after the last event it sent. We chose resync over closing the stream because
the bus already holds everything the client needs, so the client sees a complete, ordered stream and never has to
reconnect; the only cost is a few re-reads for that one client.

**Shutdown.** On exit uvicorn waits for open responses (up to its graceful-shutdown timeout, then cancels them),
and an SSE stream of a running session does not end by itself, so `app.state.streams.close_all()` ends every open
stream at once (without `end`: the client reconnects, to this or another daemon, with `Last-Event-ID`). Whoever
drives the shutdown should call it when the HTTP server is asked to stop.

**Known limit (several daemons only).** The tree stream sends frames in increasing stream sequence over the
members it knows (see `_tree_pass`). A session joins when this daemon's store applies its `session:queued`. A
grandchild accepted by *another* daemon joins when the materialiser brings that event in; if a later event of
another member is read first, the grandchild's first frames follow it. Nothing is lost or repeated, but frame ids
are then briefly not increasing, and a `Last-Event-ID` resume taken at that instant could skip those frames. The
end of the tree is not affected: it is only declared once the store has applied every member's `session:complete`,
and by then every earlier `session:queued` has been applied too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from atlas.api.state import daemon_of, streams_of
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads
from atlas.sessions.reducer import is_terminal

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

log = logging.getLogger("atlas.api.streams")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_FRAME = b": keep-alive\n\n"
# Sent at once, before any bus read: the client (and any proxy) sees the stream open even when the replay must
# first walk a long log to a resume point. A comment, so EventSource and our parsers ignore it.
OPEN_FRAME = b": stream open\n\n"

# A session id becomes a NATS subject token (sessions.<sid>.events), so anything that could widen the subject
# ('.', '*', '>', whitespace) is refused before the bus is asked.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_FIRST_PAGE = 32
_FLUSH_BYTES = 64 * 1024  # frames of a tree pass are written in chunks of about this size

Stored = tuple[int, bytes, dict[str, Any]]
"""One durable event as `SessionLog.read_page` returns it: (stream sequence, its one-line JSON bytes, the event)."""


@dataclass
class StreamSettings:
    """Tunables of the streams. The defaults are the spec's; tests shorten them to observe keep-alive and overflow."""

    keepalive_s: float = 15.0
    """Spec §9: a `: keep-alive` comment after this much silence, so proxies and browsers keep the connection."""
    queue_capacity: int = 1024
    """Bound of one stream's hand-off queue (see "Slow clients" above)."""
    read_page: int = 256
    """Bus reads are paged so that a long session starts streaming at once and never sits whole in memory."""
    page_bytes: int = 1024 * 1024
    """...and a page stays around this size (a page holds at least one event, whatever its size)."""
    tree_page_bytes: int = 8 * 1024 * 1024
    """A tree pass holds one page per unfinished member: together about this much (at least 64 KiB each)."""
    correlation_wait_s: float = 2.0
    """Spec §9: a daemon that does not know a correlationId yet waits this long before 404."""
    chunk_backlog: int = 4096
    """nats-py's own pending limit for a chunk subscription (the default, 512 Ki messages, is far too generous)."""


class StreamHub:
    """Per-app state of the SSE streams: tunables, counters and the open streams (so shutdown can end them)."""

    def __init__(self) -> None:
        self.settings = StreamSettings()
        self.opened = 0
        self.resyncs = 0
        self.dropped_chunks = 0
        self._feeds: set[Feed] = set()

    @property
    def open_streams(self) -> int:
        return len(self._feeds)

    def close_all(self) -> None:
        """End every open stream at its next wake-up (used on shutdown; the clients reconnect with Last-Event-ID)."""
        for feed in list(self._feeds):
            feed.close()


class Feed:
    """The bounded hand-off from synchronous callbacks (store listener, NATS) to one stream's generator."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.capacity = max(1, hub.settings.queue_capacity)
        self.items: deque[tuple[str, Any]] = deque()
        self.resync = False
        self.closed = False
        self._wake = asyncio.Event()

    def put_event(self, event: dict[str, Any]) -> None:
        if len(self.items) >= self.capacity:
            # Durable events may not be dropped, but they can be re-read: forget what is queued and let the
            # generator fetch everything after its last sent event from the bus.
            self.hub.dropped_chunks += sum(1 for kind, _ in self.items if kind == "chunk")
            self.items.clear()
            if not self.resync:
                self.resync = True
                self.hub.resyncs += 1
        else:
            self.items.append(("event", event))
        self._wake.set()

    def put_chunk(self, data: bytes) -> None:
        if len(self.items) >= self.capacity or self.resync:
            self.hub.dropped_chunks += 1  # chunks are best effort (spec §3.3)
            return
        self.items.append(("chunk", data))
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        """True when there is work (items, a resync or a close); False after `timeout` seconds of silence."""
        if self.items or self.resync or self.closed:
            return True
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True


class _Subscriptions:
    """The live side of one stream: its feed, store listener and chunk subscription, released exactly once."""

    def __init__(self, hub: StreamHub, daemon: Daemon, feed: Feed,
                 listener: Callable[[dict[str, Any]], None], wants_chunks_of: Callable[[str], bool]) -> None:
        self.hub = hub
        self.daemon = daemon
        self.feed = feed
        self.listener = listener
        self.wants_chunks_of = wants_chunks_of
        self.sub: Any = None
        self.released = False
        self._watching = contextlib.AsyncExitStack()

    def listen(self) -> None:
        self.hub._feeds.add(self.feed)
        self.hub.opened += 1
        self.daemon.store.add_listener(self.listener)

    async def watch(self, session_id: str | None) -> None:
        """On a shared read model, events other daemons append to the session (None: to any) reach the listener
        too (`SessionStore.watching`); call after `listen` and before the replay."""
        await self._watching.enter_async_context(self.daemon.store.watching(session_id))

    async def subscribe_chunks(self, session_id: str | None) -> None:
        """Chunks of one session (None: of all, filtered by `wants_chunks_of`), registered at the server before the
        replay starts. Best effort: without a connected bus the stream still carries every durable event."""
        session_log = self.daemon.session_log
        if not session_log.connected:
            return
        try:
            self.sub = await session_log.follow_chunks(session_id, self._on_chunk,
                                                       backlog=self.hub.settings.chunk_backlog, confirm=True)
        except AtlasError as exc:
            log.info("stream without ephemeral chunks (%s): %s", session_id or "all sessions", exc.message)

    async def _on_chunk(self, session_id: str, data: bytes) -> None:
        if self.released or not self.wants_chunks_of(session_id):
            return
        if b"\n" in data or b"\r" in data:  # one SSE data line: re-encode whatever a foreign publisher sent
            try:
                data = dumps(loads(data))
            except ValueError:
                return
        self.feed.put_chunk(data)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.daemon.store.remove_listener(self.listener)
        self.hub._feeds.discard(self.feed)
        self.feed.close()
        with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
            await self._watching.aclose()
        if self.sub is not None:
            # Runs while the request's cancel scope may be cancelled (client gone): shield the UNSUB.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await self.sub.unsubscribe()


class _SseResponse(StreamingResponse):
    """A StreamingResponse that always releases its stream's subscriptions, however the response ends.

    On a client disconnect Starlette cancels the task sending the body; the generator may then be parked at a
    `yield` and never see the cancellation, so the release lives here rather than in the generator.
    """

    def __init__(self, body: AsyncGenerator[bytes, None], subs: _Subscriptions) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self._body = body
        self._subs = subs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._subs.release()
                with contextlib.suppress(Exception):
                    await self._body.aclose()


# ---------------------------------------------------------------- reading the bus


class LogCursor:
    """Reads one session's durable events from SESSION_EVENTS, resuming after the last stream sequence read.

    `final` means nothing can follow what was read: `session:complete` was read (it is always last, spec §3.2), or
    the store already had the session terminal before a read that reached the end of its subject. `confirmed`
    means the store has applied the session's terminal status (the tree stream's end condition).
    """

    __slots__ = ("after", "confirmed", "final", "page", "sid", "status")

    def __init__(self, sid: str, after: int = 0) -> None:
        self.sid = sid
        self.after = after
        self.final = False
        self.confirmed = False
        self.status: str | None = None
        self.page = _FIRST_PAGE

    def check_store(self, daemon: Daemon) -> bool:
        if not self.confirmed:
            view = daemon.store.view(self.sid)
            if view is not None and is_terminal(view.get("status")):
                self.confirmed = True
                self.status = self.status or view["status"]
        return self.confirmed

    async def read(self, daemon: Daemon, limit: int, max_bytes: int, *, track_store: bool = False,
                   ) -> tuple[list[Stored], bool]:
        """Up to `limit` events (about `max_bytes`) after `self.after`; and whether the end of the subject was hit."""
        terminal_before = track_store and self.check_store(daemon)
        batch, at_end = await daemon.session_log.read_page(self.sid, self.after, min(self.page, limit), max_bytes)
        self.page = min(self.page * 4, limit)  # a small first page gets the first frames out at once
        if batch:
            self.after = batch[-1][0]
            last = batch[-1][2]
            if last.get("type") == "session:complete":
                self.final = True
                self.status = last.get("status")
                at_end = True
        if at_end and terminal_before:
            self.final = True
        return batch, at_end


# ---------------------------------------------------------------- frames


def _data_frame(frame_id: int, data: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (frame_id, data)


def _named_frame(name: bytes, data: bytes) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name, data)


def _resume_point(request: Request) -> int:
    """`Last-Event-ID` (what an EventSource sends when it reconnects) wins over `?after=`; 0 replays everything."""
    raw = request.headers.get("last-event-id")
    name = "Last-Event-ID"
    if raw is None or not raw.strip():
        raw, name = request.query_params.get("after"), "after"
    if raw is None or not raw.strip():
        return 0
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise AtlasError("invalid_query", f"{name} must be a non-negative integer",
                         [{"path": name, "message": "expected a non-negative integer"}])
    return int(raw)


# ---------------------------------------------------------------- per-session stream


async def _session_frames(hub: StreamHub, daemon: Daemon, sid: str, after: int,
                          feed: Feed) -> AsyncGenerator[bytes, None]:
    """Replay `seq > after` from the bus, then follow the feed; ends with `event: end` after `session:complete`."""
    cfg = hub.settings
    cursor = LogCursor(sid)
    last = after  # the highest seq the client has (sent by us, or skipped because of its resume point)
    yield OPEN_FRAME

    async def from_bus() -> AsyncIterator[bytes]:
        nonlocal last
        while True:
            batch, at_end = await cursor.read(daemon, cfg.read_page, cfg.page_bytes)
            frames = []
            for _, data, event in batch:
                seq = event.get("seq")
                if isinstance(seq, int) and seq > last:
                    last = seq
                    frames.append(_data_frame(seq, data))
            if frames:
                yield b"".join(frames)  # one write per page: a replay costs bus reads, not per-frame sends
            if at_end:
                return

    def end_frame(status: Any) -> bytes:
        return _named_frame(b"end", dumps({"status": status}))

    try:
        async for frame in from_bus():
            yield frame
        if cursor.final:
            yield end_frame(cursor.status)
            return
        if cursor.after == 0 and cursor.check_store(daemon):  # terminal, but its events passed retention
            yield end_frame(cursor.status)
            return
        while not feed.closed:
            if not await feed.wait(cfg.keepalive_s):
                yield KEEPALIVE_FRAME
                continue
            if feed.resync:
                feed.resync = False
                async for frame in from_bus():
                    yield frame
                if cursor.final:
                    yield end_frame(cursor.status)
                    return
                continue
            while feed.items and not feed.resync:
                kind, item = feed.items.popleft()
                if kind == "chunk":
                    yield _named_frame(b"ephemeral", item)
                    continue
                seq = item.get("seq")
                if not isinstance(seq, int) or seq <= last:
                    continue  # already sent by the replay (or a resync)
                if seq != last + 1:
                    feed.resync = True  # a gap: the bus has the missing events
                    break
                last = seq
                yield _data_frame(seq, dumps(item))
                if item.get("type") == "session:complete":
                    yield end_frame(item.get("status"))
                    return
    except AtlasError as exc:
        # The bus went away mid-stream (`bus_unavailable`): close; the client reconnects with Last-Event-ID.
        log.warning("session stream %s closed: %s", sid, exc.message)


# ---------------------------------------------------------------- tree stream


def _correlation_members(daemon: Daemon, correlation_id: str) -> list[str]:
    """Every session of the read model with this correlationId (a tree holds at most ATLAS_MAX_TREE_SESSIONS)."""
    out: list[str] = []
    page_cursor: str | None = None
    while True:
        page, page_cursor = daemon.store.rm.list_sessions(correlation_id=correlation_id, limit=500,
                                                          cursor=page_cursor)
        out.extend(s["sessionId"] for s in page)
        if page_cursor is None:
            return out


async def _tree_pass(daemon: Daemon, members: dict[str, LogCursor],
                     cfg: StreamSettings) -> AsyncIterator[tuple[int, bytes]]:
    """New events of every unfinished member, merged by stream sequence (a k-way merge over paged reads).

    Frames leave in increasing stream sequence, which is what makes `Last-Event-ID` a safe resume point. Before
    an event read by bus read number `k` leaves, every member that has nothing buffered must have been found
    exhausted by a read that started after read `k`: the event was stored before read `k`, so anything such a
    member writes later gets a higher stream sequence. Members that are not fresh enough are read again first
    (a bounded cost: one more read of each unfinished member per page). Members the listener adds while the pass
    runs are admitted the same way, so a child accepted by this daemon is merged in ahead of any later event of
    its parent.
    """
    buffers: dict[str, deque[Stored]] = {}
    read_no: dict[str, int] = {}  # the read that filled a member's buffer
    exhausted_at: dict[str, int] = {}  # members (not final) whose last read reached the end of their subject
    more: dict[str, bool] = {}
    heap: list[tuple[int, str]] = []
    admitted: set[str] = set()
    reads = 0
    unfinished = sum(1 for c in members.values() if not c.final) or 1
    budget = max(64 * 1024, cfg.tree_page_bytes // unfinished)  # bytes per member page, for this pass

    async def refill(cursor: LogCursor) -> None:
        nonlocal reads
        reads += 1
        number = reads
        batch, at_end = await cursor.read(daemon, cfg.read_page, budget, track_store=True)
        more[cursor.sid] = not at_end
        if at_end and not cursor.final:
            exhausted_at[cursor.sid] = number
        else:
            exhausted_at.pop(cursor.sid, None)
        if batch:
            buffers[cursor.sid] = deque(batch)
            read_no[cursor.sid] = number
            heapq.heappush(heap, (batch[0][0], cursor.sid))

    while True:
        if len(admitted) != len(members):
            for sid, cursor in list(members.items()):
                if sid not in admitted:
                    admitted.add(sid)
                    if not cursor.final:
                        await refill(cursor)
            continue
        if not heap:
            return
        stream_seq, sid = heap[0]
        number = read_no[sid]
        stale = [m for m, n in exhausted_at.items() if n < number and not buffers.get(m)]
        if stale:
            for m in stale:
                await refill(members[m])
            continue
        heapq.heappop(heap)
        buf = buffers[sid]
        _, data, _ = buf.popleft()
        if buf:
            heapq.heappush(heap, (buf[0][0], sid))
        elif more[sid] and not members[sid].final:
            await refill(members[sid])
        yield stream_seq, data


def _tree_done(daemon: Daemon, members: dict[str, LogCursor]) -> bool:
    """Every member read to its end *and* terminal in the store.

    The second half is what makes the end safe: the store applies events in stream order (the materialiser) or
    right after writing them (this daemon's runners, which accept children before they continue), so once it has
    applied a member's `session:complete`, every child's `session:queued` that came before has reached our
    listener and the member set is complete.
    """
    return all(c.final and c.check_store(daemon) for c in members.values())


async def _tree_frames(hub: StreamHub, daemon: Daemon, correlation_id: str, members: dict[str, LogCursor],
                       feed: Feed) -> AsyncGenerator[bytes, None]:
    """Replay the whole tree in stream order, then one merged pass per wake-up; `event: end` once all are done."""
    cfg = hub.settings
    yield OPEN_FRAME
    try:
        while True:
            frames: list[bytes] = []
            size = 0
            async for stream_seq, data in _tree_pass(daemon, members, cfg):
                frames.append(_data_frame(stream_seq, data))
                size += len(frames[-1])
                if size >= _FLUSH_BYTES:
                    yield b"".join(frames)
                    frames.clear()
                    size = 0
            if frames:  # a pass reads what is already stored: its frames leave together, in order
                yield b"".join(frames)
            if _tree_done(daemon, members):
                yield _named_frame(b"end", dumps({"correlationId": correlation_id, "sessions": len(members)}))
                return
            while True:  # until something durable happened: chunks are sent in arrival order meanwhile
                if feed.closed:
                    return
                if not await feed.wait(cfg.keepalive_s):
                    yield KEEPALIVE_FRAME
                    continue
                durable = feed.resync
                feed.resync = False
                while feed.items and not durable:
                    kind, item = feed.items.popleft()
                    if kind == "chunk":
                        yield _named_frame(b"ephemeral", item)
                    else:
                        durable = True
                        while feed.items and feed.items[0][0] == "event":  # one pass covers them all
                            feed.items.popleft()
                if durable:
                    break
    except AtlasError as exc:
        log.warning("tree stream %s closed: %s", correlation_id, exc.message)


# ---------------------------------------------------------------- routes
# GET /api/sessions/stream and GET /api/sessions/{id}/stream (`app.state.streams` is their StreamHub); their OpenAPI
# description is the hand-written one of `atlas.api.openapi`.


async def tree_stream(request: Request) -> Response:
    """Tree stream (A): every session of a correlationId, merged in stream order; 404 after waiting up to
    `correlation_wait_s` for a correlationId this daemon does not know yet."""
    daemon, hub = daemon_of(request), streams_of(request)
    correlation_id = request.query_params.get("correlationId")
    if not correlation_id:
        raise AtlasError("invalid_query", "correlationId is required",
                         [{"path": "correlationId", "message": "required"}])
    after = _resume_point(request)
    members: dict[str, LogCursor] = {}
    feed = Feed(hub)

    def listener(event: dict[str, Any]) -> None:
        sid = event.get("sessionId")
        if not isinstance(sid, str):
            return
        if sid not in members:
            if event.get("type") != "session:queued" or event.get("correlationId") != correlation_id:
                return
            members[sid] = LogCursor(sid, after)  # a child created after connect joins the tree here
        feed.put_event(event)

    subs = _Subscriptions(hub, daemon, feed, listener, members.__contains__)
    subs.listen()
    try:
        await subs.watch(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hub.settings.correlation_wait_s
        while True:
            for sid in _correlation_members(daemon, correlation_id):
                members.setdefault(sid, LogCursor(sid, after))
            remaining = deadline - loop.time()
            if members or remaining <= 0 or feed.closed:
                break
            # Woken at once by a session:queued of this correlationId; the timeout re-checks the read model.
            await feed.wait(min(0.1, remaining))
        if not members:
            raise AtlasError("correlation_not_found", f"No session with correlationId '{correlation_id}'")
        await subs.subscribe_chunks(None)
    except BaseException:
        await subs.release()
        raise
    return _SseResponse(_tree_frames(hub, daemon, correlation_id, members, feed), subs)


async def session_stream(request: Request) -> Response:
    """Per-session stream: replay after `Last-Event-ID` (or `?after=`), then live events and chunks."""
    daemon, hub = daemon_of(request), streams_of(request)
    session_id: str = request.path_params["session_id"]
    after = _resume_point(request)
    not_found = AtlasError("session_not_found", f"Session '{session_id}' not found")
    if not _SESSION_ID.match(session_id):
        raise not_found
    if daemon.store.rm.get_last_seq(session_id) == 0:  # the read model has every session the store knows
        try:  # accepted by another daemon and not materialised here yet: its subject is the truth
            known = await daemon.session_log.last(session_id) is not None
        except AtlasError:
            raise AtlasError("bus_unavailable", "The message bus is unavailable") from None
        if not known:
            raise not_found
    feed = Feed(hub)

    def listener(event: dict[str, Any]) -> None:
        if event.get("sessionId") == session_id:
            feed.put_event(event)

    subs = _Subscriptions(hub, daemon, feed, listener, session_id.__eq__)
    subs.listen()
    try:
        await subs.watch(session_id)
        await subs.subscribe_chunks(session_id)
    except BaseException:
        await subs.release()
        raise
    return _SseResponse(_session_frames(hub, daemon, session_id, after, feed), subs)
