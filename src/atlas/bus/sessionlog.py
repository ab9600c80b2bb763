"""The session-log port: the one place that knows how a session's log lives on the bus (spec §3, §6.2).

A session's durable events are the messages of subject `sessions.<sid>.events` in stream SESSION_EVENTS; its
ephemeral chunks are core-NATS messages on `ephemeral.sessions.<sid>`. Everything above the bus (the SSE streams,
the trigger's SSE mode, and soon recovery and view rebuilds) reads a log through `SessionLog` and never builds a
subject, a JetStream request or a header by hand. Appends go through it too: `SessionWriter` (the one writer of a
session, spec §6.3) appends here, recovery and view rebuilds read whole logs here (`read_all`, on the batched
reader), and the runner publishes its chunks here, so one class owns writing and reading a session's log.

Reads are paged and keep the stored bytes: a page is fetched with one *batched* direct get where the server has it
(nats-server 2.11+, ADR-31), about 14x faster than one request per event, so a long session starts streaming at once
and is never held whole in memory; and a reader that forwards events (an SSE frame) needs no re-encoding.

Failures of the bus surface as `AtlasError("bus_unavailable")`: callers decide what an unreadable log means for
them (a 503, a closed stream, a retry) without knowing NATS's exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import nats.errors
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from atlas.bus.client import SESSION_EVENTS, Bus, ephemeral_subject, events_subject
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads

Stored = tuple[int, bytes, dict[str, Any]]
"""One durable event as read from the log: (stream sequence, its one-line JSON bytes, the parsed event).

A plain tuple, not a class: a replay builds one per event on the streaming hot path."""

ChunkHandler = Callable[[str, bytes], Awaitable[None]]
"""Called with (session id, chunk bytes as published) for each ephemeral chunk."""

_BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)  # nats.js errors and AckLost are among these
_BATCH_TIMEOUT_S = 10.0  # per message of a batched read, like the JetStream API timeout of Bus
_ALL_SESSIONS = ephemeral_subject("*")
_READ_ALL_PAGE = 256
_READ_ALL_BYTES = 1024 * 1024


def _unavailable(exc: BaseException) -> AtlasError:
    return AtlasError("bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}")


def _stored(stream_seq: int, data: bytes) -> Stored:
    event = loads(data)
    if b"\n" in data or b"\r" in data:  # the log's own writer never does this; a foreign one might
        data = dumps(event)
    return stream_seq, data, event


class SessionLog:
    """Reads sessions' logs: pages of durable events after a stream sequence, the last event, and live chunks."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    @property
    def connected(self) -> bool:
        """Whether the bus connection is up now (a subscription made while it is down would wait for it)."""
        return self._bus.connected

    async def read_page(self, session_id: str, after: int, limit: int, max_bytes: int) -> tuple[list[Stored], bool]:
        """Up to `limit` events (about `max_bytes`, at least one) of the session with a stream sequence above
        `after`, in order; and whether the log has nothing more after them for now (always true once the page
        ends with `session:complete`, which is last, spec §3.2).

        `after` is a stream sequence (0: from the start), so a reader resumes exactly where its last page ended.
        """
        try:
            nc = self._bus.nc
            version = getattr(nc, "connected_server_version", None) if nc is not None else None
            if nc is not None and version is not None and (version.major, version.minor) >= (2, 11):
                return await self._read_batch(session_id, after, limit, max_bytes)
            return await self._read_one_by_one(session_id, after, limit)
        except _BUS_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def last(self, session_id: str) -> tuple[dict[str, Any], int] | None:
        """The session's latest durable event and its stream sequence; None when the log has no such session."""
        try:
            return await self._bus.last_event(session_id)
        except _BUS_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def follow_chunks(self, session_id: str | None, on_chunk: ChunkHandler, *, backlog: int,
                            confirm: bool = False) -> Subscription:
        """Deliver the ephemeral chunks of one session (`None`: of every session) to `on_chunk` until the returned
        subscription is unsubscribed.

        Chunks are best effort (spec §3.3): `backlog` bounds what waits for a slow handler (nats-py's default,
        512 Ki messages, is far too generous), and beyond it chunks are dropped. With `confirm`, returns only once
        the server has registered the subscription, so nothing published after the call is missed.
        """
        nc = self._bus.nc
        if nc is None:
            raise AtlasError("bus_unavailable", "The message bus is unavailable")

        async def deliver(msg: Any) -> None:
            await on_chunk(msg.subject.rpartition(".")[2], msg.data)

        subject = _ALL_SESSIONS if session_id is None else ephemeral_subject(session_id)
        try:
            sub = await nc.subscribe(subject, cb=deliver, pending_msgs_limit=backlog)
            if confirm:
                await nc.flush(timeout=1)
        except _BUS_ERRORS as exc:
            raise _unavailable(exc) from exc
        return sub

    async def follow_events(self, session_id: str | None, on_event: Callable[[bytes], None]) -> Subscription:
        """Deliver every durable event of one session (`None`: of every session) as published, to `on_event`,
        until the returned subscription is unsubscribed; returns once the server has registered it.

        A plain subscription on the log's subjects, not a JetStream consumer: it costs the stream nothing, and
        it sees what any daemon appends from now on. What was appended before, the caller reads from the log
        (`last`, `read_page`); a shared read model's daemons use it for the waits and streams of sessions another
        daemon writes (issue #15)."""
        nc = self._bus.nc
        if nc is None:
            raise AtlasError("bus_unavailable", "The message bus is unavailable")

        async def deliver(msg: Any) -> None:
            on_event(msg.data)

        try:
            sub = await nc.subscribe(events_subject("*" if session_id is None else session_id), cb=deliver)
            await nc.flush(timeout=1)
        except _BUS_ERRORS as exc:
            raise _unavailable(exc) from exc
        return sub

    # ------------------------------------------------------------ the runtime's side

    async def append(self, event: dict[str, Any], expected_last_subject_seq: int | None,
                     retry_for: float | None = None) -> int:
        """Append one durable event after the stream sequence `expected_last_subject_seq` (0: the first; None: no
        condition) and return its own; WrongLastSequence when another writer got there first.

        The JetStream mechanics — the `Nats-Msg-Id` dedupe, the ride through a leader election, recognising our own
        copy whose ack was lost — are `Bus.append_event`'s. A failing bus raises its own errors here, not
        `bus_unavailable`: a run tells the bus failing under it from a bug in itself by them."""
        return await self._bus.append_event(event, expected_last_subject_seq, retry_for)

    async def read_all(self, session_id: str, limit: int | None = None) -> list[tuple[dict[str, Any], int]]:
        """Every durable event of the session in order (or its first `limit`), each with its stream sequence: what
        recovery and view rebuilds fold. Paged over the batched reader, a page per request."""
        out: list[tuple[dict[str, Any], int]] = []
        after = 0
        while limit is None or len(out) < limit:
            want = _READ_ALL_PAGE if limit is None else min(_READ_ALL_PAGE, limit - len(out))
            page, at_end = await self.read_page(session_id, after, want, _READ_ALL_BYTES)
            out.extend((event, stream_seq) for stream_seq, _, event in page)
            if at_end or not page:
                break
            after = page[-1][0]
        return out

    async def publish_chunk(self, session_id: str, data: bytes) -> None:
        """Publish an encoded chunk on the session's ephemeral subject; nothing while disconnected (chunks are best
        effort, spec §3.3, and a run must not wait for a bus that is away)."""
        nc = self._bus.nc
        if nc is not None and nc.is_connected:
            await nc.publish(ephemeral_subject(session_id), data)

    # ------------------------------------------------------------ reading

    async def _read_batch(self, session_id: str, after: int, limit: int, max_bytes: int) -> tuple[list[Stored], bool]:
        """One batched direct get (ADR-31): the server sends up to `batch` messages (about `max_bytes`), then a
        `204 EOB` status carrying `Nats-Num-Pending`; a `404` when nothing follows `after`. Headers are read by
        hand because nats-py's `get_msg` knows no batches."""
        nc = self._bus.nc
        assert nc is not None
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        out: list[Stored] = []
        try:
            request = {"seq": after + 1, "next_by_subj": events_subject(session_id), "batch": limit,
                       "max_bytes": max_bytes}
            await nc.publish(f"$JS.API.DIRECT.GET.{SESSION_EVENTS}", dumps(request), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=_BATCH_TIMEOUT_S)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":  # nothing after `after`
                    return out, True
                if status == "204":  # end of this batch
                    return out, headers.get("Nats-Num-Pending", "0") == "0"
                if status is not None:
                    raise nats.errors.Error(f"direct get of {session_id}: status {status} "
                                            f"{headers.get('Description', '')}")
                out.append(_stored(int(headers["Nats-Sequence"]), msg.data))
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _read_one_by_one(self, session_id: str, after: int, limit: int) -> tuple[list[Stored], bool]:
        """Servers before 2.11: one direct get per event (what `Bus.read_events` does)."""
        out: list[Stored] = []
        subject = events_subject(session_id)
        seq = after + 1
        while len(out) < limit:
            try:
                msg = await self._bus.js.get_msg(SESSION_EVENTS, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                return out, True
            if msg.data is None or msg.seq is None:
                return out, True
            out.append(_stored(int(msg.seq), msg.data))
            seq = int(msg.seq) + 1
            if out[-1][2].get("type") == "session:complete":
                return out, True
        return out, False
