"""Keeps the read model in step with SESSION_EVENTS (spec §7.1).

An ordered consumer on `sessions.*.events` resumes from the stream sequence stored with the read model, so events
written by other daemons (and anything this daemon missed while down) land in SQLite. Events this daemon wrote
itself were applied already; the store's `seq` guard makes them no-ops.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from atlas.bus.client import SESSION_EVENTS, Bus
from atlas.sessions.store import SessionStore

log = logging.getLogger("atlas.materializer")


class Materializer:
    def __init__(self, bus: Bus, store: SessionStore) -> None:
        self.bus = bus
        self.store = store
        self._sub: Any = None

    async def start(self) -> None:
        last = self.store.rm.get_stream_seq()
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
        if last == 0:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        self._sub = await self.bus.js.subscribe(
            "sessions.*.events", stream=SESSION_EVENTS, ordered_consumer=True, config=cfg, cb=self._on_msg,
            idle_heartbeat=5.0,
        )

    async def _on_msg(self, msg: Any) -> None:
        # Most events on this subject are our own, already applied: `Nats-Msg-Id` (`sid:seq`) tells so without
        # decoding the body.
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        sid, _, seq = msg_id.rpartition(":")
        if sid and seq.isdigit() and self.store.has_applied(sid, int(seq)):
            self.store.note_stream_seq(int(msg.metadata.sequence.stream))
            return
        try:
            event = json.loads(msg.data)
            stream_seq = int(msg.metadata.sequence.stream)
        except Exception:
            log.warning("skipping unreadable event on %s", msg.subject)
            return
        self.store.apply(event, stream_seq)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
