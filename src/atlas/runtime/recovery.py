"""Crash recovery (spec §8.1): settle what a dead daemon (or this one, before a restart) left in flight.

It runs once at start, before the consumer takes work, then every 10 s. Running sessions have no marker: the read
model lists the active ones and `session:start` names each one's runner, so a session whose runner is gone is
found without a write per session at start and end. Interrupted sessions are never re-run: their steps may have
had side effects. Queued ones are republished (deduplicated by sessionId), so they run. Markers are left only for
parked sessions (and by older versions).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from atlas.bus.client import Bus, WrongLastSequence
from atlas.bus.records import InflightMarker, envelope_from_queued
from atlas.bus.sessionlog import SessionLog
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.lifecycle import UNSTARTED_TYPES, SessionLifecycle
from atlas.runtime.lineage import Lineage
from atlas.runtime.markers import Markers
from atlas.sessions import events
from atlas.sessions.events import SessionCompleteEvent, duration_ms, format_iso, now_iso, parse_iso
from atlas.sessions.materializer import Materializer
from atlas.sessions.reducer import is_terminal
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter

log = logging.getLogger("atlas.recovery")
INTERRUPTED = "Daemon stopped before the session finished"


class Recovery:
    STRANDED_PER_PASS = 200
    REPUBLISHED_KEPT = 100_000
    RUNNERS_KEPT = 100_000

    def __init__(self, *, bus: Bus, session_log: SessionLog, store: SessionStore, materializer: Materializer,
                 lifecycle: SessionLifecycle, concurrency: ConcurrencyControl, lineage: Lineage, markers: Markers,
                 is_daemon_alive: Callable[[str | None], Awaitable[bool]], daemon_id: str, started_at: str,
                 ack_wait_s: float) -> None:
        """`started_at`: when this daemon process started (its own sessions started before are a previous
        life's); `ack_wait_s`: ATLAS_ACK_WAIT, the patience before a queued or started session counts as stuck."""
        self.bus = bus
        self.session_log = session_log
        self.store = store
        self.materializer = materializer
        self.lifecycle = lifecycle
        self.concurrency = concurrency
        self.lineage = lineage
        self.markers = markers
        self.is_daemon_alive = is_daemon_alive
        self.daemon_id = daemon_id
        self.started_at = started_at
        self.ack_wait_s = ack_wait_s
        self._republished: dict[str, None] = {}  # queued sessions whose envelope this process republished
        self._runners: dict[str, str] = {}  # sessionId -> the daemon that started it
        self._sweep_from = ""  # queuedAt where the next page of the stranded-session sweep starts

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(10)
            try:
                await self.run_once(at_start=False)
            except Exception:
                log.exception("recovery pass failed")

    async def run_once(self, *, at_start: bool) -> None:
        if not self.materializer.follow:
            await self.materializer.fill_gaps()
        marked = await self.markers.sessions()
        for sid in marked:
            marker = await self.markers.get(sid)
            if marker is None:
                continue
            try:
                await self._settle_marker(sid, marker, at_start)
            except Exception:
                log.exception("recovering %s failed", sid)
        await self._settle_active(at_start)
        await self._republish_stranded(set(marked))
        await self._start_orphaned_parked()

    async def runner_of(self, sid: str) -> str | None:
        """The daemon that started the session, from its `session:start` (seq 2, or 3 after a `session:waiting`);
        None if it has not started. A session's runner never changes, so it is read once per process."""
        runner = self._runners.get(sid)
        if runner is None:
            start = next((e for e, _ in await self.session_log.read_all(sid, limit=3)
                          if e.get("type") == "session:start"), None)
            if start is None or not start.get("runner"):
                return None
            runner = self._runners[sid] = str(start["runner"])
            while len(self._runners) > self.RUNNERS_KEPT:
                self._runners.pop(next(iter(self._runners)))
        return runner

    async def _settle_active(self, at_start: bool) -> None:
        """Active sessions whose runner is gone end `interrupted` (spec §8.1). Another daemon is gone when its
        heartbeat has expired. This daemon's own sessions that it is not running are dead at start, when they
        started before this process, or when a run of this process ended without its terminal event (the bus was
        down) — the last only after 2 × ATLAS_ACK_WAIT, since a session is started just before its run is
        registered."""
        alive: dict[str, bool] = {}
        for summary in self.store.rm.non_terminal(("active",)):
            sid = str(summary.get("sessionId", ""))
            if self.lifecycle.is_running(sid):
                continue
            try:
                runner = await self.runner_of(sid)
                if runner is None:
                    continue
                if runner == self.daemon_id:
                    started_at = str(summary.get("startedAt") or "")
                    previous_life = started_at < self.started_at
                    orphan = age_seconds(started_at) > 2 * self.ack_wait_s
                    if not (at_start or previous_life or orphan) or self.lifecycle.is_running(sid):
                        continue
                else:
                    if runner not in alive:
                        alive[runner] = await self.is_daemon_alive(runner)
                    if alive[runner]:
                        continue
                await self.interrupt(sid, {k: summary.get(k) for k in ("sessionId", "workspaceId", "signalId")})
            except Exception:
                log.exception("recovering active %s failed", sid)

    async def _settle_marker(self, sid: str, marker: InflightMarker, at_start: bool) -> None:
        """A marker: a parked session, or a leftover (a crash between a parked session's start and the removal of
        its marker, or a marker of an older version)."""
        last = await self.session_log.last(sid)
        if last is None:
            await self.markers.drop(sid)  # acceptance never finished
            return
        if last[0].get("type") == "session:complete":
            await self._ensure_view(sid)
            envelope = marker["envelope"]
            await self.lifecycle.finalize(envelope, self.lifecycle.policy_of(envelope), drop_marker=True)
            return
        if last[0].get("type") not in UNSTARTED_TYPES:
            # Started: the session is in the read model as active, where `_settle_active` looks after it.
            await self.markers.drop(sid)
            return
        if marker.get("parked"):
            return
        accepted = marker.get("acceptedAt")
        if at_start or (accepted and age_seconds(accepted) > 2 * self.ack_wait_s):
            await self.bus.publish_envelope(marker["envelope"])

    async def _republish_stranded(self, marked: set[str]) -> None:
        """Queued sessions older than 2 × ATLAS_ACK_WAIT whose envelope may never have landed: acceptance writes the
        envelope and `session:queued` at once, and if only the second landed and the failed session could not be
        ended either, nothing would ever run or end it. An envelope rebuilt from `session:queued` is republished
        (once per session and process, a page of 200 sessions a pass): where the original is still in SIGNALS
        the broker drops the copy (`Nats-Msg-Id` = sessionId, 1 h window), and a copy that does get through finds
        the session started or ended and is dropped by the consumer (started sessions are never run twice, spec
        §6.5). Parked sessions (they have a marker) are waiting on purpose."""
        cutoff = format_iso(datetime.now(UTC) - timedelta(seconds=2 * self.ack_wait_s))
        # A sweep over the old queued sessions, a page per pass: a long backlog or many parked sessions cost each
        # pass a bounded read, and every session is looked at once per sweep.
        page = self.store.rm.non_terminal(("queued",), queued_after=self._sweep_from, queued_before=cutoff,
                                       limit=self.STRANDED_PER_PASS)
        self._sweep_from = str(page[-1].get("queuedAt") or "") if len(page) == self.STRANDED_PER_PASS else ""
        for summary in page:
            sid = str(summary.get("sessionId", ""))
            if sid in marked or sid in self._republished:
                continue
            try:
                events = await self.session_log.read_all(sid)
                if len(events) != 1 or events[0][0].get("type") != "session:queued":
                    if self.store.shared and len(events) > 1:
                        # Its row is still `queued` although the log moved on: its writer died before writing
                        # the row (each session's rows are its writer's alone): reconciled from the log here, and
                        # an `active` one whose runner is gone is then ended by `_settle_active`.
                        for event, stream_seq in events:
                            self.store.apply(event, stream_seq)
                    continue  # moved on since the read model looked
                await self.bus.publish_envelope(envelope_from_queued(events[0][0]))
            except Exception:
                log.exception("republishing the envelope of %s failed", sid)
                continue
            self._republished[sid] = None
            while len(self._republished) > self.REPUBLISHED_KEPT:
                self._republished.pop(next(iter(self._republished)))

    async def _ensure_view(self, sid: str) -> None:
        """A read model that lacks the session (e.g. a deleted SQLite file) is refilled from the log; so is a shared
        one's row always, since the writer it is recovered from may have died before writing its last rows."""
        if self.store.shared or self.store.view(sid) is None:
            await self.materializer.rebuild(sid)

    async def interrupt(self, sid: str, envelope: dict[str, Any] | None = None) -> None:
        """End an active session whose runner is gone as `interrupted`, keeping its correlationId and lineage.
        `envelope` (at least sessionId, workspaceId, signalId) finalises it; a leftover marker's is used if none."""
        await self._ensure_view(sid)
        for _ in range(3):
            # One read decides and positions the writer: the write below expects exactly that last event, so a
            # terminal event landing in between makes it fail instead of ending the session twice.
            last = await self.session_log.last(sid)
            if last is not None and last[0].get("type") == "session:complete":
                self.store.apply(*last)  # the log, not the local view, decides: a write may have landed unacked
                break
            writer = SessionWriter.after(self.session_log, self.store, sid, last)
            view = self.store.view(sid)
            if view is not None and is_terminal(view["status"]):
                break
            try:
                await writer.append(interrupted_event(sid, writer.next_seq, view))
                break
            except WrongLastSequence:
                continue
        marker = await self.markers.get(sid) if envelope is None else None
        if marker is not None:
            envelope = marker["envelope"]
        if envelope is not None:
            await self.lifecycle.finalize(envelope, self.lifecycle.policy_of(envelope), drop_marker=marker is not None)

    async def _start_orphaned_parked(self) -> None:
        """Keys with parked sessions and no live holder: promote the head (compare-and-set: one daemon wins).

        A holder still `queued` was promoted but never started (its promoter failed between the hold and the
        start): it is started here. Starting is safe to race, since `session:start` expects the log to end at
        `session:queued` and only one writer can get that."""
        for key in await self.concurrency.keys():
            rec = await self.concurrency.record(key)
            if rec is None:
                continue
            for holder in rec["holders"]:
                view = self.store.view(holder)
                if view is not None and view["status"] == "queued" and not self.lifecycle.is_running(holder):
                    await self.lifecycle.start_parked(holder)
            if not rec["queue"] or any(self.lineage.is_alive(h) for h in rec["holders"]):
                continue
            ws_id, _, sig_id = key.partition(".")
            await self.lifecycle.release_and_start_next(ws_id, sig_id, "", "queue")


def interrupted_event(sid: str, seq: int, view: dict[str, Any] | None) -> SessionCompleteEvent:
    """The `session:complete` of a session whose runner is gone: `interrupted`, and as long as it ran, from its
    `startedAt` to now (its runner's own clock is lost with it; 0 when the view does not say when it started)."""
    now = now_iso()
    started_at = view.get("startedAt") if view is not None else None
    try:
        ran_ms = duration_ms(started_at, now) if isinstance(started_at, str) and started_at else 0
    except ValueError:
        ran_ms = 0
    return events.complete(sessionId=sid, seq=seq, timestamp=now, status="interrupted",
                           durationMs=ran_ms, error=INTERRUPTED, errorCode="interrupted")


def age_seconds(iso: str) -> float:
    """Seconds since an RFC 3339 timestamp (0 for one that cannot be read: never "too old")."""
    try:
        return (datetime.now(UTC) - parse_iso(iso)).total_seconds()
    except ValueError:
        return 0.0
