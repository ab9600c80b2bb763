"""Keeps the read model in step with SESSION_EVENTS (spec §7.1).

An ordered consumer on `sessions.*.events` resumes from the stream sequence stored with the read model, so events
written by other daemons (and anything this daemon missed while down) land in SQLite. Events this daemon wrote
itself were applied already; the store's `seq` guard makes them no-ops.

On an embedded bus the daemon is the only writer, so following the stream would only hand every event back to
the process that wrote it (a third of a trigger's CPU went there). There the materialiser catches up once at start
and stops; the store then moves the resume point with its own acknowledged writes, and `fill_gaps` reads back any
write whose acknowledgement was lost, so a restart never replays more than the last few moments. Should another
daemon connect to the embedded bus anyway (it says hello on start, and shows up in the heartbeats), the
materialiser follows from the resume point on, so nothing it wrote meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from atlas.bus.client import SESSION_EVENTS, Bus
from atlas.bus.sessionlog import SessionLog
from atlas.jsoncodec import loads
from atlas.sessions.store import SessionStore

log = logging.getLogger("atlas.materializer")


class Materializer:
    CATCH_UP_IDLE_S = 2.0

    def __init__(self, *, bus: Bus, store: SessionStore, session_log: SessionLog, follow: bool = True) -> None:
        """`follow`: follow the log live (an external bus: other daemons write to it), rather than catch up once
        at start and own it (an embedded one, see above)."""
        self.bus = bus
        self.store = store
        self.session_log = session_log
        self.follow = follow
        self._sub: Any = None

    async def start(self) -> None:
        last = self.store.rm.get_stream_seq()
        if not self.follow:
            await self._catch_up(last)
            return
        await self._subscribe(last)

    async def follow_now(self) -> None:
        """Another daemon shares this bus after all: follow the stream from the store's resume point on."""
        if self.follow:
            return
        self.follow = True
        await self._subscribe(self.store.share_the_log())

    async def _subscribe(self, last: int) -> None:
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
            event = loads(msg.data)
            stream_seq = int(msg.metadata.sequence.stream)
        except Exception:
            log.warning("skipping unreadable event on %s", msg.subject)
            return
        self.store.apply(event, stream_seq)

    async def _catch_up(self, last: int) -> None:
        """Apply every event after `last` that exists now, then hand the resume point to the store."""
        info = await self.bus.js.stream_info(SESSION_EVENTS)
        end = int(info.state.last_seq or 0)
        if info.state.messages and end > last:
            done = asyncio.Event()
            progress = [last]

            async def on_msg(msg: Any) -> None:
                await self._on_msg(msg)
                seq = int(msg.metadata.sequence.stream)
                progress[0] = seq
                self.store.caught_up_to(seq)  # in order: sequences skipped on the way were purged
                if seq >= end or not msg.metadata.num_pending:
                    done.set()

            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
            sub = await self.bus.js.subscribe("sessions.*.events", stream=SESSION_EVENTS, ordered_consumer=True,
                                              config=cfg, cb=on_msg)
            try:
                seen = progress[0]
                while not done.is_set():
                    try:
                        await asyncio.wait_for(done.wait(), self.CATCH_UP_IDLE_S)
                    except TimeoutError:
                        if progress[0] == seen:  # nothing more arrives: what is left of (last, end] was purged
                            break
                        seen = progress[0]
            finally:
                await sub.unsubscribe()
            log.info("read model caught up from stream sequence %d to %d", last, progress[0])
        # Whatever was not delivered (purged) is below `end`; later sequences are this daemon's own writes — unless
        # another daemon said hello meanwhile, and the stream is followed already.
        if not self.follow:
            self.store.own_the_log(end)

    async def fill_gaps(self) -> int:
        """Sole writer: read back the messages behind write acknowledgements that never arrived; returns how many
        sequences were settled."""
        settled = 0
        for seq in self.store.gaps():
            try:
                msg = await self.bus.js.get_msg(SESSION_EVENTS, seq=seq, direct=True)
            except NotFoundError:
                self.store.note_written(seq)  # deleted meanwhile (retention): nothing to apply
                settled += 1
                continue
            if msg.data:
                with contextlib.suppress(ValueError):
                    self.store.apply(loads(msg.data), seq)
            self.store.note_written(seq)
            settled += 1
        return settled

    async def rebuild(self, session_id: str) -> dict[str, Any] | None:
        """Fold one session's whole log into the read model, in order; its view, or None when the log is empty.

        For a session this daemon has not seen (a deleted read model, another daemon's session on an embedded bus)
        or whose end another writer wrote: the store's `seq` guard skips what it has, so nothing is applied twice.
        """
        events = await self.session_log.read_all(session_id)
        for event, stream_seq in events:
            self.store.apply(event, stream_seq)
        return self.store.view(session_id) if events else None

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
