"""Concurrency policies per (workspace, signal) (spec §5.5), decided by compare-and-set on KV `CONCURRENCY`.

The record `{holders: [sid], queue: [sid]}` (`atlas.bus.records.ConcurrencyRecord`) is changed only with the
revision read just before, so two daemons (or two tasks) deciding at once cannot both become the holder.
`concurrent` keys never touch the bucket: they have no holder to track, and that keeps the common case at zero
extra round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from atlas.bus.client import KV_CONCURRENCY, Bus, WrongLastSequence
from atlas.bus.records import ConcurrencyRecord, concurrency_key, concurrency_record, read_concurrency

__all__ = ["ConcurrencyControl", "Decision", "concurrency_key"]


@dataclass
class Decision:
    action: str  # start | skip | park | deadlock
    holder: str | None = None
    victims: list[str] = field(default_factory=list)
    ahead: list[str] = field(default_factory=list)
    """For `park`: the sessions that must end before this one starts (the holders, then the queue ahead of it); its
    `session:waiting` names them (issue #16)."""


class ConcurrencyControl:
    def __init__(self, *, bus: Bus, is_alive: Callable[[str], bool], ancestors: Callable[[str], set[str]]) -> None:
        """`is_alive(sid)`: the session is not terminal; `ancestors(sid)`: its parent chain (for deadlocks)."""
        self.bus = bus
        self.is_alive = is_alive
        self.ancestors = ancestors

    async def _read(self, key: str) -> tuple[ConcurrencyRecord, int | None]:
        found = await self.bus.kv_get(KV_CONCURRENCY, key)
        if found is None:
            return concurrency_record([], []), None
        rec, rev = found
        return read_concurrency(rec), rev

    async def _write(self, key: str, rec: ConcurrencyRecord, rev: int | None) -> None:
        if rev is None:
            await self.bus.kv_create(KV_CONCURRENCY, key, rec)
        else:
            await self.bus.kv_update(KV_CONCURRENCY, key, rec, rev)

    async def admit(self, workspace_id: str, signal_id: str, sid: str, policy: str) -> Decision:
        if policy == "concurrent":
            return Decision("start")
        key = concurrency_key(workspace_id, signal_id)
        while True:
            rec, rev = await self._read(key)
            holders = [h for h in rec["holders"] if h != sid and self.is_alive(h)]
            queue = [q for q in rec["queue"] if self.is_alive(q)]
            if sid in rec["holders"]:
                return Decision("start")  # a redelivery of a session we already admitted
            decision = Decision("start")
            if policy == "skip":
                if holders:
                    return Decision("skip", holder=holders[0])
                new = concurrency_record([sid], queue)
            elif policy == "queue":
                blocked = bool(holders) or (bool(queue) and queue[0] != sid)
                if blocked:
                    mine = self.ancestors(sid)
                    if any(h in mine for h in holders):
                        return Decision("deadlock", holder=next(h for h in holders if h in mine))
                    if sid not in queue:
                        queue.append(sid)
                    new = concurrency_record(holders, queue)
                    decision = Decision("park", holder=holders[0] if holders else None,
                                        ahead=holders + queue[:queue.index(sid)])
                else:
                    new = concurrency_record([sid], [q for q in queue if q != sid])
            else:  # replace
                decision = Decision("start", victims=holders + [q for q in queue if q != sid])
                new = concurrency_record([sid], [])
            try:
                await self._write(key, new, rev)
            except WrongLastSequence:
                continue
            return decision

    async def release(self, workspace_id: str, signal_id: str, sid: str, policy: str) -> str | None:
        """Drop `sid` from the key; for `queue`, promote the next parked session and return its id."""
        if policy == "concurrent":
            return None
        key = concurrency_key(workspace_id, signal_id)
        while True:
            rec, rev = await self._read(key)
            if rev is None:
                return None
            holders = [h for h in rec["holders"] if h != sid and self.is_alive(h)]
            queue = [q for q in rec["queue"] if q != sid and self.is_alive(q)]
            nxt = None
            if policy == "queue" and not holders and queue:
                nxt = queue.pop(0)
                holders = [nxt]
            if holders == rec["holders"] and queue == rec["queue"]:
                return None
            try:
                await self._write(key, concurrency_record(holders, queue), rev)
            except WrongLastSequence:
                continue
            return nxt

    async def keys(self) -> list[str]:
        """Every key with a record (recovery looks for keys whose holder died with parked sessions behind it)."""
        return await self.bus.kv_keys(KV_CONCURRENCY)

    async def record(self, key: str) -> ConcurrencyRecord | None:
        """A key's current record, None when it has none."""
        rec, rev = await self._read(key)
        return rec if rev is not None else None
