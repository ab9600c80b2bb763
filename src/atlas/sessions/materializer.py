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

On a shared read model (PostgreSQL, issue #15) nobody follows the log: each session's rows are written once, by the
daemon that writes its events (`SessionStore.share`), so the work per event does not grow with the daemons. The
materialiser then only folds logs on demand: a whole session (`rebuild`: recovery reconciling the rows of a
session whose writer died) or the whole stream (`rebuild_all`: `atlas admin rebuild-readmodel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from atlas.bus.client import SESSION_EVENTS, Bus
from atlas.bus.sessionlog import SessionLog
from atlas.errors import AtlasError
from atlas.jsoncodec import loads
from atlas.sessions.readmodel import encode_rows
from atlas.sessions.readmodel_port import ReadModelPort
from atlas.sessions.reducer import initial_view, is_terminal, reduce, summarize
from atlas.sessions.store import SessionStore

log = logging.getLogger("atlas.materializer")

_BUS_ERRORS = (nats.errors.Error, TimeoutError)


class Materializer:
    CATCH_UP_IDLE_S = 2.0

    def __init__(self, *, bus: Bus, store: SessionStore, session_log: SessionLog, follow: bool = True) -> None:
        """`follow`: follow the log live (an external bus: other daemons write to it), rather than catch up once
        at start and own it (an embedded one, see above). Neither on a shared read model (`store.shared`)."""
        self.bus = bus
        self.store = store
        self.session_log = session_log
        self.follow = follow or store.shared  # other daemons change nothing then: see `follow_now`
        self._sub: Any = None
        self._rebuilding = asyncio.Lock()  # one `rebuild_all` at a time

    async def start(self) -> None:
        if self.store.shared:
            log.info("shared read model: each session's rows are written by the daemon that writes its events")
            return
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

        async def apply(msg: Any) -> None:
            await self._on_msg(msg)
            self.store.caught_up_to(int(msg.metadata.sequence.stream))  # in order: skipped sequences were purged

        end, reached = await self._replay(last, apply)
        if reached is not None:
            log.info("read model caught up from stream sequence %d to %d", last, reached)
        # Whatever was not delivered (purged) is below `end`; later sequences are this daemon's own writes — unless
        # another daemon said hello meanwhile, and the stream is followed already.
        if not self.follow:
            self.store.own_the_log(end)

    async def _replay(self, last: int, handle: Callable[[Any], Awaitable[None]]) -> tuple[int, int | None]:
        """Hand every message after stream sequence `last` that exists now to `handle`, in order.

        Returns the stream's last sequence when the replay began (`end`) and the last sequence delivered (None when
        there was nothing to deliver). The end is the message at `end`, or the first one with nothing pending
        behind it; should deliveries stop short of it for `CATCH_UP_IDLE_S` (the rest was purged meanwhile), the
        replay ends there."""
        info = await self.bus.js.stream_info(SESSION_EVENTS)
        end = int(info.state.last_seq or 0)
        if not info.state.messages or end <= last:
            return end, None
        done = asyncio.Event()
        progress = [last]

        async def on_msg(msg: Any) -> None:
            await handle(msg)
            seq = int(msg.metadata.sequence.stream)
            progress[0] = seq
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
        return end, progress[0]

    async def rebuild_all(self) -> dict[str, int]:
        """Refill the read model from the whole SESSION_EVENTS stream (`atlas admin rebuild-readmodel`); returns
        `{events, sessions, written, partial}`: the events folded, the sessions they belong to, the rows written,
        and the sessions skipped because the stream no longer holds their first event (see `_Refill`).

        Each session is folded from its first event, never from its row, and written with the read model's
        `last_seq` guard: a missing row comes back, a row behind the log moves forward, a row that is right is
        left alone (`written` 0 on a second run). The store is bypassed on purpose: its memory of recently ended
        sessions says "applied" for rows the database has lost, and a damaged row's view is no base to fold on. So
        the store's resume point and sole-writer bookkeeping are untouched, and its own writes go on meanwhile
        (the guard orders the two). Events written after the replay began are the store's, as always.

        Raises `bus_unavailable` when the stream cannot be read to its end, `read_model_unavailable` when the
        PostgreSQL read model cannot be written."""
        async with self._rebuilding:
            refill = _Refill(self.store.rm, self.session_log)
            try:
                end, reached = await self._replay(0, refill.add)
            except _BUS_ERRORS as exc:
                raise AtlasError("bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}") from exc
            if reached is not None and reached < end and not self.bus.connected:
                raise AtlasError("bus_unavailable", "The message bus went away during the rebuild")
            try:
                if refill.error is not None:
                    raise refill.error
                await refill.write()
            except refill.rm.transient_errors as exc:
                raise AtlasError("read_model_unavailable", "The read model cannot be written",
                                 {"reason": type(exc).__name__}) from exc
            log.info("read model rebuilt from %d events of %d sessions (stream sequences 1 to %d): %d rows written, "
                     "%d partial sessions skipped", refill.events, len(refill.seen), reached or 0, refill.written,
                     len(refill.partial))
            return {"events": refill.events, "sessions": len(refill.seen), "written": refill.written,
                    "partial": len(refill.partial)}

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


class _Refill:
    """The fold of `Materializer.rebuild_all`: views from the log alone, written in batches of `BATCH` sessions.

    Memory stays bounded by the sessions in flight, not the whole log: once a terminal view is written it is
    dropped (a terminal view only takes `session:summary` after that); should a later event of such a session
    come, its view is folded again from its own log. A session whose first event in the stream is not its
    `seq` 1 lost its head to retention (or a purge): it is skipped (`partial`) rather than written as a row folded
    from its tail, and its row, if any, is left as it is."""

    BATCH = 500

    def __init__(self, rm: ReadModelPort, session_log: SessionLog) -> None:
        self.rm = rm
        self.session_log = session_log
        self.views: dict[str, dict[str, Any]] = {}
        self.dirty: set[str] = set()
        self.seen: set[str] = set()
        self.partial: set[str] = set()
        self.events = 0
        self.written = 0
        self.error: Exception | None = None

    async def add(self, msg: Any) -> None:
        """The replay's handler. nats-py swallows what a subscription callback raises, so the first failure is
        kept (and the rest of the replay skipped) for `rebuild_all` to raise once the replay is over."""
        if self.error is not None:
            return
        try:
            await self._add(msg)
        except Exception as exc:
            self.error = exc

    async def _add(self, msg: Any) -> None:
        try:
            event = loads(msg.data)
        except ValueError:
            log.warning("skipping unreadable event on %s", msg.subject)
            return
        sid = event.get("sessionId") if isinstance(event, dict) else None
        if not isinstance(sid, str) or not isinstance(event.get("seq"), int) or sid in self.partial:
            return
        base = self.views.get(sid)
        if base is None:
            if sid in self.seen:  # written and dropped already: its whole log, this event included, again
                self.views[sid] = await self._refold(sid)
                self.dirty.add(sid)
                self.events += 1
                return
            if event["seq"] != 1:  # its head aged out of the stream (retention): no row from a tail
                self.partial.add(sid)
                return
            base = initial_view()
            self.seen.add(sid)
        self.events += 1
        view = reduce(base, event)
        self.views[sid] = view
        if view is not base:
            self.dirty.add(sid)
        if len(self.dirty) >= self.BATCH:
            await self.write()

    async def _refold(self, sid: str) -> dict[str, Any]:
        view = initial_view()
        for event, _ in await self.session_log.read_all(sid):
            view = reduce(view, event)
        return view

    async def write(self) -> None:
        """Write the dirty views (guarded by `last_seq`), on a thread: a PostgreSQL round trip must not hold the
        loop, which goes on serving requests."""
        if not self.dirty:
            return
        batch = {sid: self.views[sid] for sid in self.dirty}
        self.dirty = set()
        encoded = encode_rows((view, summarize(view)) for view in batch.values())
        self.written += await asyncio.to_thread(self.rm.upsert_encoded, encoded, None)
        for sid, view in batch.items():
            if is_terminal(view["status"]):
                del self.views[sid]
