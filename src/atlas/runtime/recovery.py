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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from atlas.bus.client import KV_CONCURRENCY, KV_INFLIGHT, WrongLastSequence
from atlas.runtime.consumer import age_seconds
from atlas.sessions import events
from atlas.sessions.events import SessionCompleteEvent, duration_ms, format_iso, now_iso
from atlas.sessions.reducer import is_terminal

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

log = logging.getLogger("atlas.recovery")
INTERRUPTED = "Daemon stopped before the session finished"


class Recovery:
    STRANDED_PER_PASS = 200
    REPUBLISHED_KEPT = 100_000
    RUNNERS_KEPT = 100_000

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
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
        d = self.d
        if not d.materializer.follow:
            await d.materializer.fill_gaps()
        marked = await d.bus.kv_keys(KV_INFLIGHT)
        for sid in marked:
            found = await d.bus.kv_get(KV_INFLIGHT, sid)
            if found is None:
                continue
            try:
                await self._settle_marker(sid, found[0], at_start)
            except Exception:
                log.exception("recovering %s failed", sid)
        await self._settle_active(at_start)
        await self._republish_stranded(set(marked))
        await self._start_orphaned_parked()

    async def runner_of(self, sid: str) -> str | None:
        """The daemon that started the session, from its `session:start` (seq 2); None if it has not started.
        A session's runner never changes, so it is read once per process."""
        runner = self._runners.get(sid)
        if runner is None:
            start = next((e for e, _ in await self.d.bus.read_events(sid, limit=2)
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
        d = self.d
        alive: dict[str, bool] = {}
        for summary in d.store.rm.non_terminal(("active",)):
            sid = str(summary.get("sessionId", ""))
            if sid in d.runs:
                continue
            try:
                runner = await self.runner_of(sid)
                if runner is None:
                    continue
                if runner == d.daemon_id:
                    started_at = str(summary.get("startedAt") or "")
                    previous_life = started_at < d.started_at
                    orphan = age_seconds(started_at) > 2 * d.settings.ack_wait_s
                    if not (at_start or previous_life or orphan) or sid in d.runs:
                        continue
                else:
                    if runner not in alive:
                        alive[runner] = await d.is_daemon_alive(runner)
                    if alive[runner]:
                        continue
                await self.interrupt(sid, {k: summary.get(k) for k in ("sessionId", "workspaceId", "signalId")})
            except Exception:
                log.exception("recovering active %s failed", sid)

    async def _settle_marker(self, sid: str, marker: dict[str, Any], at_start: bool) -> None:
        """A marker: a parked session, or a leftover (a crash between a parked session's start and the removal of
        its marker, or a marker of an older version)."""
        d = self.d
        last = await d.bus.last_event(sid)
        if last is None:
            await d.bus.kv_delete(KV_INFLIGHT, sid)  # acceptance never finished
            return
        if last[0].get("type") == "session:complete":
            await self._ensure_view(sid)
            await d.finalize(marker["envelope"], self._policy(marker["envelope"]), drop_marker=True)
            return
        if last[0].get("type") != "session:queued":
            # Started: the session is in the read model as active, where `_settle_active` looks after it.
            await d.bus.kv_delete(KV_INFLIGHT, sid)
            return
        if marker.get("parked"):
            return
        accepted = marker.get("acceptedAt")
        if at_start or (accepted and age_seconds(accepted) > 2 * d.settings.ack_wait_s):
            await d.bus.publish_envelope(marker["envelope"])

    async def _republish_stranded(self, marked: set[str]) -> None:
        """Queued sessions older than 2 × ATLAS_ACK_WAIT whose envelope may never have landed: acceptance writes the
        envelope and `session:queued` at once, and if only the second landed and the failed session could not be
        ended either, nothing would ever run or end it. An envelope rebuilt from `session:queued` is republished
        (once per session and process, a page of 200 sessions a pass): where the original is still in SIGNALS
        the broker drops the copy (`Nats-Msg-Id` = sessionId, 1 h window), and a copy that does get through finds
        the session started or ended and is dropped by the consumer (started sessions are never run twice, spec
        §6.5). Parked sessions (they have a marker) are waiting on purpose."""
        d = self.d
        cutoff = format_iso(datetime.now(UTC) - timedelta(seconds=2 * d.settings.ack_wait_s))
        # A sweep over the old queued sessions, a page per pass: a long backlog or many parked sessions cost each
        # pass a bounded read, and every session is looked at once per sweep.
        page = d.store.rm.non_terminal(("queued",), queued_after=self._sweep_from, queued_before=cutoff,
                                       limit=self.STRANDED_PER_PASS)
        self._sweep_from = str(page[-1].get("queuedAt") or "") if len(page) == self.STRANDED_PER_PASS else ""
        for summary in page:
            sid = str(summary.get("sessionId", ""))
            if sid in marked or sid in self._republished:
                continue
            try:
                events = await d.bus.read_events(sid)
                if len(events) != 1 or events[0][0].get("type") != "session:queued":
                    continue  # moved on since the read model looked
                await d.bus.publish_envelope(envelope_from_queued(events[0][0]))
            except Exception:
                log.exception("republishing the envelope of %s failed", sid)
                continue
            self._republished[sid] = None
            while len(self._republished) > self.REPUBLISHED_KEPT:
                self._republished.pop(next(iter(self._republished)))

    async def _ensure_view(self, sid: str) -> None:
        """A read model that lacks the session (e.g. a deleted SQLite file) is refilled from the log."""
        if self.d.store.view(sid) is None:
            for event, stream_seq in await self.d.bus.read_events(sid):
                self.d.store.apply(event, stream_seq)

    def _policy(self, envelope: dict[str, Any]) -> str:
        ws = self.d.workspaces.get(envelope.get("workspaceId", ""))
        sig = ws.config.signals.get(envelope.get("signalId", "")) if ws is not None else None
        return sig.concurrency if sig is not None else "concurrent"

    async def interrupt(self, sid: str, envelope: dict[str, Any] | None = None) -> None:
        """End an active session whose runner is gone as `interrupted`, keeping its correlationId and lineage.
        `envelope` (at least sessionId, workspaceId, signalId) finalises it; a leftover marker's is used if none."""
        d = self.d
        from atlas.sessions.writer import SessionWriter

        await self._ensure_view(sid)
        for _ in range(3):
            # One read decides and positions the writer: the write below expects exactly that last event, so a
            # terminal event landing in between makes it fail instead of ending the session twice.
            last = await d.bus.last_event(sid)
            if last is not None and last[0].get("type") == "session:complete":
                d.store.apply(*last)  # the log, not the local view, decides: a write may have landed unacked
                break
            writer = SessionWriter.after(d.bus, d.store, sid, last)
            view = d.store.view(sid)
            if view is not None and is_terminal(view["status"]):
                break
            try:
                await writer.append(interrupted_event(sid, writer.next_seq, view))
                break
            except WrongLastSequence:
                continue
        marker = await d.bus.kv_get(KV_INFLIGHT, sid) if envelope is None else None
        if marker is not None:
            envelope = marker[0]["envelope"]
        if envelope is not None:
            await d.finalize(envelope, self._policy(envelope), drop_marker=marker is not None)

    async def _start_orphaned_parked(self) -> None:
        """Keys with parked sessions and no live holder: promote the head (compare-and-set: one daemon wins).

        A holder still `queued` was promoted but never started (its promoter failed between the hold and the
        start): it is started here. Starting is safe to race, since `session:start` expects the log to end at
        `session:queued` and only one writer can get that."""
        d = self.d
        for key in await d.bus.kv_keys(KV_CONCURRENCY):
            found = await d.bus.kv_get(KV_CONCURRENCY, key)
            if found is None:
                continue
            rec = found[0]
            for holder in rec.get("holders", []):
                view = d.store.view(holder)
                if view is not None and view["status"] == "queued" and holder not in d.runs:
                    await d.consumer.start_parked(holder)
            if not rec.get("queue") or any(d._is_alive(h) for h in rec.get("holders", [])):
                continue
            ws_id, _, sig_id = key.partition(".")
            nxt = await d.concurrency.release(ws_id, sig_id, "", "queue")
            if nxt is not None:
                await d.consumer.start_parked(nxt)


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


ENVELOPE_FROM_QUEUED = ("workspaceId", "signalId", "sessionId", "correlationId", "parentSessionId", "rootSessionId",
                        "depth", "trigger", "payload")


def envelope_from_queued(event: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a session, rebuilt from its `session:queued` (which carries everything the consumer needs;
    a webhook's raw body and an SSE stream id are not kept there, and a session republished this way runs
    without them)."""
    envelope = {k: event[k] for k in ENVELOPE_FROM_QUEUED if event.get(k) is not None or k == "payload"}
    envelope["acceptedAt"] = event.get("timestamp")
    return envelope
