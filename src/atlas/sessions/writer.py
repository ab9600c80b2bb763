"""The single writer of one session's log (spec §6.3).

It numbers events (`seq` 1, 2, 3… without gaps), stamps them, publishes each with the stream sequence of the
previous one as `Nats-Expected-Last-Subject-Sequence`, and applies it to the local store once JetStream has
acknowledged it. Losing that condition means another writer (a cancel, another daemon) got there first: the caller
re-reads and obeys (WrongLastSequence propagates). A writer that knows its session's log already ends with
`session:complete` refuses to append anything but `session:summary` the same way: whoever positioned it read the
log after another writer's terminal event, and a second terminal record would break spec §4.4.

While JetStream does not answer (a leader election on a cluster that lost a node), an append is sent again with
the same `Nats-Msg-Id` for up to `retry_for` seconds (the bus's `write_retry_s` unless the writer was given less:
the accept pipeline answers an HTTP caller, a run can wait longer); see `SessionLog.append`.

Events come in whole, built by their constructors in `atlas.sessions.events` (the only place that builds them), for
this writer's session and its `next_seq`; the writer checks both rather than rewriting them, so what a producer built
is byte for byte what lands on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar, cast

from atlas.bus.client import WrongLastSequence
from atlas.bus.sessionlog import SessionLog
from atlas.sessions.events import DurableEvent
from atlas.sessions.store import SessionStore

E = TypeVar("E", bound=DurableEvent)

#: The events the store's observer (metrics) is told about: a session's start and its end.
_OBSERVED = frozenset({"session:start", "session:complete"})

#: How many times a refused append is sent again while the log has not moved (see `SessionWriter._send`).
REFUSALS_RESENT = 2


class SessionWriter:
    def __init__(self, log: SessionLog, store: SessionStore, session_id: str, seq: int = 0, stream_seq: int = 0,
                 last_type: str | None = None, retry_for: float | None = None) -> None:
        self.log = log
        self.store = store
        self.session_id = session_id
        self.seq = seq
        self.stream_seq = stream_seq
        self.last_type = last_type  # type of the event at `seq`, when known
        self.retry_for = retry_for  # how long an append rides through a silent bus (None: the bus's default)

    @classmethod
    async def resume(cls, log: SessionLog, store: SessionStore, session_id: str) -> SessionWriter:
        """A writer positioned after the session's current last event."""
        return cls.after(log, store, session_id, await log.last(session_id))

    @classmethod
    def after(cls, log: SessionLog, store: SessionStore, session_id: str,
              last: tuple[dict[str, Any], int] | None) -> SessionWriter:
        """A writer positioned after `last` (the session's last event and its stream sequence, as read)."""
        if last is None:
            return cls(log, store, session_id)
        event, stream_seq = last
        store.seed(event)
        return cls(log, store, session_id, seq=int(event["seq"]), stream_seq=stream_seq, last_type=event.get("type"))

    @property
    def ended(self) -> bool:
        """The log this writer is positioned on already ends with `session:complete`."""
        return self.last_type == "session:complete"

    @property
    def next_seq(self) -> int:
        """The `seq` of the next event this writer appends."""
        return self.seq + 1

    async def append(self, event: E) -> E:
        """Append `event` (built for this session at `next_seq`) and apply it to the local store once acked."""
        event_type = event["type"]
        if self.ended and event_type != "session:summary":
            raise WrongLastSequence(f"session {self.session_id} has already ended")
        if event["seq"] != self.seq + 1 or event["sessionId"] != self.session_id:
            raise ValueError(f"event {event['sessionId']}#{event['seq']} is not next in this writer's log "
                             f"({self.session_id}#{self.seq + 1})")
        data = cast(dict[str, Any], event)
        first = self.seq == 0 and self.stream_seq == 0
        # Shielded: a cancel (of the run, or of a request) that arrives while the event is on its way must not leave
        # the writer behind its own log. The write lands or fails within the bus's retry budget; its bookkeeping is
        # done before the cancel goes on, so the runner's next write (its `session:complete`) follows it instead of
        # being refused as out of sequence.
        landing = asyncio.ensure_future(self._send(data))
        try:
            stream_seq = await asyncio.shield(landing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._advance(data, first, await landing)
            raise
        self._advance(data, first, stream_seq)
        return event

    async def _send(self, data: dict[str, Any]) -> int:
        """Append `data` where this writer stands. A refusal as a lost race while the log still ends where this
        writer stands is sent again (at most `REFUSALS_RESENT` times): a 3-node cluster once refused a runner's
        append with "wrong last sequence" although nobody else had written, and the same writer's next append was
        accepted. A resend is safe because the bus still enforces the expected sequence: had another writer
        written, it is refused again."""
        for resent in range(REFUSALS_RESENT + 1):
            try:
                return await self.log.append(data, self.stream_seq, self.retry_for)
            except WrongLastSequence:
                if resent == REFUSALS_RESENT or not await self._log_ends_here():
                    raise
        raise AssertionError("unreachable")

    async def _log_ends_here(self) -> bool:
        """Whether the log's last event is still the one this writer follows (False when that cannot be read)."""
        try:
            last = await self.log.last(self.session_id)
        except Exception:
            return False
        return (last[1] if last is not None else 0) == self.stream_seq

    def _advance(self, data: dict[str, Any], first: bool, stream_seq: int) -> None:
        """The event landed at `stream_seq`: move past it and fold it into the local store."""
        self.stream_seq = stream_seq
        self.seq += 1
        self.last_type = data["type"]
        view = self.store.apply(data, new=first)
        self.store.note_written(stream_seq)
        observer = self.store.observer
        if observer is not None and data["type"] in _OBSERVED:
            # Applied first by the materialiser (our own event coming back): the store holds the view already.
            view = view or self.store.view(self.session_id)
            if view is not None:
                observer.event_written(data, view)
