"""The single writer of one session's log (spec §6.3).

It numbers events (`seq` 1, 2, 3… without gaps), stamps them, publishes each with the stream sequence of the
previous one as `Nats-Expected-Last-Subject-Sequence`, and applies it to the local store once JetStream has
acknowledged it. Losing that condition means another writer (a cancel, another daemon) got there first: the caller
re-reads and obeys (WrongLastSequence propagates).
"""

from __future__ import annotations

from typing import Any

from atlas.bus.client import Bus
from atlas.sessions.events import now_iso
from atlas.sessions.store import SessionStore


class SessionWriter:
    def __init__(self, bus: Bus, store: SessionStore, session_id: str, seq: int = 0, stream_seq: int = 0) -> None:
        self.bus = bus
        self.store = store
        self.session_id = session_id
        self.seq = seq
        self.stream_seq = stream_seq

    @classmethod
    async def resume(cls, bus: Bus, store: SessionStore, session_id: str) -> SessionWriter:
        """A writer positioned after the session's current last event."""
        last = await bus.last_event(session_id)
        if last is None:
            return cls(bus, store, session_id)
        event, stream_seq = last
        return cls(bus, store, session_id, seq=int(event["seq"]), stream_seq=stream_seq)

    async def append(self, event_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": event_type,
            "sessionId": self.session_id,
            "seq": self.seq + 1,
            "timestamp": now_iso(),
        }
        # Optional fields are omitted when None; `payload` is kept (a non-JSON webhook body is `null`, spec §5.2).
        event.update({k: v for k, v in fields.items() if v is not None or k == "payload"})
        first = self.seq == 0 and self.stream_seq == 0
        self.stream_seq = await self.bus.append_event(event, self.stream_seq)
        self.seq += 1
        self.store.apply(event, new=first)
        self.store.note_written(self.stream_seq)
        return event
