"""Concurrency policies per (workspace, signal) (spec §5.5), decided by compare-and-set on KV `CONCURRENCY`.

The record `{holders: [sid], queue: [sid]}` is changed only with the revision read just before, so two daemons (or
two tasks) deciding at once cannot both become the holder. `concurrent` keys never touch the bucket: they have no
holder to track, and that keeps the common case at zero extra round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atlas.bus.client import KV_CONCURRENCY, Bus, WrongLastSequence


@dataclass
class Decision:
    action: str  # start | skip | park | deadlock
    holder: str | None = None
    victims: list[str] = field(default_factory=list)


def concurrency_key(workspace_id: str, signal_id: str) -> str:
    return f"{workspace_id}.{signal_id}"


class ConcurrencyControl:
    def __init__(self, bus: Bus, is_alive: Callable[[str], bool], ancestors: Callable[[str], set[str]]) -> None:
        """`is_alive(sid)`: the session is not terminal; `ancestors(sid)`: its parent chain (for deadlocks)."""
        self.bus = bus
        self.is_alive = is_alive
        self.ancestors = ancestors

    async def _read(self, key: str) -> tuple[dict[str, list[str]], int | None]:
        found = await self.bus.kv_get(KV_CONCURRENCY, key)
        if found is None:
            return {"holders": [], "queue": []}, None
        rec, rev = found
        return {"holders": list(rec.get("holders", [])), "queue": list(rec.get("queue", []))}, rev

    async def _write(self, key: str, rec: dict[str, Any], rev: int | None) -> None:
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
                new = {"holders": [sid], "queue": queue}
            elif policy == "queue":
                blocked = bool(holders) or (bool(queue) and queue[0] != sid)
                if blocked:
                    mine = self.ancestors(sid)
                    if any(h in mine for h in holders):
                        return Decision("deadlock", holder=next(h for h in holders if h in mine))
                    if sid not in queue:
                        queue.append(sid)
                    new = {"holders": holders, "queue": queue}
                    decision = Decision("park", holder=holders[0] if holders else None)
                else:
                    new = {"holders": [sid], "queue": [q for q in queue if q != sid]}
            else:  # replace
                decision = Decision("start", victims=holders + [q for q in queue if q != sid])
                new = {"holders": [sid], "queue": []}
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
                await self._write(key, {"holders": holders, "queue": queue}, rev)
            except WrongLastSequence:
                continue
            return nxt

    async def parked_heads(self) -> list[tuple[str, str]]:
        """(key, sid) of keys with parked sessions and no live holder: recovery starts them (spec §8.1)."""
        out = []
        for key in await self.bus.kv_keys(KV_CONCURRENCY):
            rec, _ = await self._read(key)
            if rec["queue"] and not any(self.is_alive(h) for h in rec["holders"]):
                out.append((key, rec["queue"][0]))
        return out
