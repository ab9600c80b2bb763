"""What follows a session's terminal event (spec §3.2, finalisation): its summary in `SESSION_METADATA`, its
marker gone, and — for a session that never started — the terminal event itself.

Why apart from the lifecycle: the accept pipeline ends the sessions it refuses or strands here, and it must not
depend on what runs sessions (which depends on it, for cascades). This part needs only the session log, the read
model and the KV buckets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from atlas.bus.client import KV_METADATA, Bus, WrongLastSequence
from atlas.bus.sessionlog import SessionLog
from atlas.runtime.markers import Markers
from atlas.sessions import events
from atlas.sessions.reducer import is_terminal, summarize
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter

__all__ = ["Finalizer"]

log = logging.getLogger("atlas.daemon")

RETRY_DELAYS_S = (0.5, 1, 2, 5, 10, 10, 10, 30, 30, 60)
"""Backoff of a summary write while the bus recovers; after the last one, recovery's passes take over."""


class Finalizer:
    def __init__(self, *, bus: Bus, session_log: SessionLog, store: SessionStore, markers: Markers,
                 rebuild_view: Callable[[str], Awaitable[dict[str, Any] | None]],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.bus = bus
        self.session_log = session_log
        self.store = store
        self.markers = markers
        self.rebuild_view = rebuild_view
        self.spawn = spawn

    async def write_final(self, sid: str, drop_marker: bool = False) -> None:
        """Summary to KV SESSION_METADATA (spec §3.2, finalisation), and the marker removed if asked: only parked
        sessions and leftovers found by recovery have one.

        Only a terminal summary is stored, and the log decides what it is: a local view that is not terminal yet
        (another daemon's `session:complete` not materialised here) is brought up to date from the log first."""
        view = self.store.view(sid)
        if view is None or not is_terminal(view["status"]):
            last = await self.session_log.last(sid)
            if last is not None and last[0].get("type") == "session:complete":
                view = await self.rebuild_view(sid)  # every event in order, not just the last: no holes
        ops: list[Any] = [self.markers.drop(sid)] if drop_marker else []
        if view is not None and is_terminal(view["status"]):
            ops.append(self.bus.kv_put(KV_METADATA, sid, summarize(view)))
        await asyncio.gather(*ops)

    def retry_later(self, sid: str, drop_marker: bool) -> None:
        """Keep trying `write_final` in the background (the bus is failing; the terminal event is durable)."""
        self.spawn(self._retry_final(sid, drop_marker))

    async def _retry_final(self, sid: str, drop_marker: bool) -> None:
        for delay in RETRY_DELAYS_S:
            await asyncio.sleep(delay)  # backoff while the bus recovers (not a synchronisation)
            try:
                await self.write_final(sid, drop_marker)
                return
            except Exception as exc:
                log.debug("finalising %s: %s", sid, exc)
        log.error("finalising %s kept failing; recovery will retry", sid)

    async def end_unstarted(self, writer: SessionWriter, status: str, code: str, message: str,
                            drop_marker: bool = False, duplicate_of: str | None = None) -> bool:
        """End a session that never started (policy skip, limits, cancel while queued) and write its summary.
        False if it lost a race (another writer ended or started it first). Releasing its key is the caller's.
        `duplicate_of`: for policy skip, the running session it duplicates (recorded so the UI can link it)."""
        try:
            await writer.append(events.complete(sessionId=writer.session_id, seq=writer.next_seq, status=status,
                                                durationMs=0, error=message, errorCode=code,
                                                duplicateOf=duplicate_of))
        except WrongLastSequence:
            return False
        try:
            await self.write_final(writer.session_id, drop_marker)
        except Exception:  # the bus is failing: keep trying in the background, the terminal event is durable
            self.retry_later(writer.session_id, drop_marker)
        return True
