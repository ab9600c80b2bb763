"""Runner slots (ATLAS_MAX_CONCURRENT_SESSIONS): how many sessions this daemon runs at once.

Why a counter and not a semaphore: the consumer fetches as many envelopes as there are free slots in one request
(`try_take`), a run gives its slot back when it ends, and a run that waits on a child (a cascade with `wait`) lends
its slot out meanwhile (`give`, then `take`), so parents waiting on children cannot starve the children.
"""

from __future__ import annotations

import asyncio

__all__ = ["Slots"]


class Slots:
    """Free runner slots; the consumer fetches only as many messages as are free."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._changed = asyncio.Event()

    def try_take(self, k: int) -> int:
        """Take up to `k` slots at once, without waiting; returns how many were taken."""
        got = min(k, self.free)
        self.free -= got
        return got

    async def take(self) -> None:
        """Take one slot, waiting until one is free."""
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()
        self.free -= 1

    def give(self, k: int = 1) -> None:
        self.free += k
        self._changed.set()

    async def wait_free(self) -> None:
        """Wait until a slot is free, without taking it."""
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()
