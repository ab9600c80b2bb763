"""The SESSION_INFLIGHT bucket (spec §8.1): markers of sessions parked in their key's queue.

Why one owner: the consumer parks sessions here, the lifecycle starts and cancels them from their marker, the
finaliser and recovery drop markers, and recovery settles leftovers — each once read the bucket and picked the
record apart by itself. Here the bucket is read and written in one place, with the record of `atlas.bus.records`
(markers of older versions included: they lack `parked` and may say `state: active`).
"""

from __future__ import annotations

from typing import Any

from atlas.bus.client import KV_INFLIGHT, Bus
from atlas.bus.records import InflightMarker, parked_marker

__all__ = ["Markers"]


class Markers:
    def __init__(self, *, bus: Bus) -> None:
        self.bus = bus

    async def park(self, envelope: dict[str, Any]) -> None:
        """Park the envelope's session durably (its key's queue holds its id; this holds what starts it)."""
        await self.bus.kv_put(KV_INFLIGHT, envelope["sessionId"], parked_marker(envelope))

    async def get(self, session_id: str) -> InflightMarker | None:
        found = await self.bus.kv_get(KV_INFLIGHT, session_id)
        return found[0] if found is not None else None

    async def drop(self, session_id: str) -> None:
        await self.bus.kv_delete(KV_INFLIGHT, session_id)

    async def sessions(self) -> list[str]:
        """The sessions that have a marker now."""
        return await self.bus.kv_keys(KV_INFLIGHT)
