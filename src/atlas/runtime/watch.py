"""Watches of sessions other daemons write, for a daemon on a shared read model (issue #15).

On PostgreSQL each session's rows are written once, by the daemon that writes its events, and no daemon follows
the whole log. A daemon that waits for a session it does not run (a synchronous trigger whose session another
daemon picked up, a cancel that waits for the runner's end) or streams one needs that session's events all the
same: a watch subscribes to its subject (`sessions.<sid>.events`, or every session's for a tree stream) while
somebody needs it — one subscription per session however many wait, dropped with the last of them.

Events reach the store's listeners (`SessionStore.observe`); an end reaches its waiters as the session's view
folded from its log (`SessionStore.settle`), since the row its writer commits may trail the event by a flush.
The end may have been written before the subscription took effect: once subscribed, the log's last event says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.subscription import Subscription

from atlas.bus.sessionlog import SessionLog
from atlas.errors import AtlasError
from atlas.jsoncodec import loads
from atlas.sessions.reducer import initial_view, reduce
from atlas.sessions.store import SessionStore

log = logging.getLogger("atlas.watch")


@dataclass
class _Entry:
    ready: asyncio.Future[Subscription | None]
    users: int = 0


class SessionWatch:
    def __init__(self, *, session_log: SessionLog, store: SessionStore,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.session_log = session_log
        self.store = store
        self.spawn = spawn
        self._entries: dict[str | None, _Entry] = {}
        self._settling: set[str] = set()

    @contextlib.asynccontextmanager
    async def watch(self, session_id: str | None) -> AsyncIterator[None]:
        """Subscribed while entered. Best effort: without a bus nothing arrives (waits end by their timeouts)."""
        entry = await self._enter(session_id)
        try:
            if session_id is not None and entry.ready.result() is not None:
                await self._check_end(session_id)
            yield
        finally:
            await self._leave(session_id, entry)

    async def _enter(self, key: str | None) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(asyncio.get_running_loop().create_future())
            entry.users += 1
            try:
                sub: Subscription | None = await self.session_log.follow_events(key, self._on_event)
            except AtlasError as exc:
                log.info("cannot watch %s: %s", key or "every session", exc.message)
                sub = None
            except BaseException:
                del self._entries[key]
                entry.ready.set_result(None)
                raise
            entry.ready.set_result(sub)
            return entry
        entry.users += 1
        await asyncio.shield(entry.ready)
        return entry

    async def _leave(self, key: str | None, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users:
            return
        if self._entries.get(key) is entry:
            del self._entries[key]
        sub = entry.ready.result() if entry.ready.done() else None
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(sub.unsubscribe())

    def _on_event(self, data: bytes) -> None:
        try:
            event = loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self.store.observe(event)
        sid = event.get("sessionId")
        if event.get("type") == "session:complete" and isinstance(sid, str):
            self._settle_soon(sid)

    async def _check_end(self, sid: str) -> None:
        try:
            last = await self.session_log.last(sid)
        except AtlasError:
            return
        if last is not None and last[0].get("type") == "session:complete":
            self._settle_soon(sid)

    def _settle_soon(self, sid: str) -> None:
        if self.store.awaited(sid) and sid not in self._settling:
            self._settling.add(sid)
            self.spawn(self._settle(sid))

    async def _settle(self, sid: str) -> None:
        """Fold the ended session's log into its terminal view for whoever waits for it."""
        try:
            view = initial_view()
            for event, _ in await self.session_log.read_all(sid):
                view = reduce(view, event)
            self.store.settle(sid, view)
        except AtlasError as exc:
            log.info("cannot read the end of %s: %s", sid, exc.message)
        finally:
            self._settling.discard(sid)
