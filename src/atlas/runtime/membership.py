"""Cluster membership (spec §6.7, §8.1): this daemon's heartbeat, its hello, and who else is alive.

Why on its own: liveness is what recovery and the consumer decide on ("is this session's runner gone?"), and it
has nothing to do with running sessions. Keeping it apart from the composition root gives those components one
narrow question to ask (`is_daemon_alive`) instead of a whole daemon.

A daemon is alive while its `DAEMONS` entry has not expired (the bucket's TTL is `ATLAS_HEARTBEAT_TTL`; the entry
is refreshed six times per TTL). Seeing another daemon matters to the materialiser too: on an embedded bus it does
not follow the session log (it is the only writer), so the first sign of another daemon — its hello on start, or
its heartbeat — makes it follow from then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Protocol

from atlas import __version__
from atlas.bus.client import KV_DAEMONS, Bus
from atlas.bus.records import heartbeat

__all__ = ["HELLO_SUBJECT", "LogFollower", "Membership"]

HELLO_SUBJECT = "atlas.daemons.hello"

log = logging.getLogger("atlas.daemon")


class LogFollower(Protocol):
    """What membership tells when another daemon shares the bus (the materialiser)."""

    @property
    def follow(self) -> bool:
        """Whether the session log is followed already (then other daemons change nothing)."""
        ...

    async def follow_now(self) -> None:
        """Follow the session log from here on: another daemon writes to it too."""
        ...


class Membership:
    """This daemon's presence in `DAEMONS` and its view of the others."""

    def __init__(self, *, bus: Bus, daemon_id: str, url: str, started_at: str, heartbeat_ttl_s: float,
                 follower: LogFollower) -> None:
        self.bus = bus
        self.daemon_id = daemon_id
        self.url = url
        self.started_at = started_at
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.follower = follower

    async def beat(self) -> None:
        """Write (or refresh) this daemon's heartbeat: the process that answers for this daemon id right now."""
        await self.bus.kv_put(KV_DAEMONS, self.daemon_id, heartbeat(
            url=self.url, pid=os.getpid(), version=__version__, started_at=self.started_at))

    async def listen(self) -> None:
        """Hear other daemons' hellos (subscribed before the materialiser starts, so none is missed)."""
        await self.bus.nc.subscribe(HELLO_SUBJECT, cb=self._on_hello)  # type: ignore[union-attr]

    async def say_hello(self) -> None:
        await self.bus.nc.publish(HELLO_SUBJECT, self.daemon_id.encode())  # type: ignore[union-attr]

    async def run(self) -> None:
        """Refresh the heartbeat until cancelled; a daemon found in the heartbeats makes the log shared."""
        while True:
            await asyncio.sleep(self.heartbeat_ttl_s / 6)
            try:
                await self.beat()
                if not self.follower.follow and await self.live_daemons() - {self.daemon_id}:
                    await self._share_the_log("in the heartbeats")
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def leave(self) -> None:
        """Remove the heartbeat at a clean stop, so others need not wait for it to expire."""
        await self.bus.kv_delete(KV_DAEMONS, self.daemon_id)

    async def _on_hello(self, msg: Any) -> None:
        if msg.data.decode(errors="replace") != self.daemon_id and not self.follower.follow:
            await self._share_the_log("said hello")

    async def _share_the_log(self, how: str) -> None:
        log.info("another daemon shares the embedded bus (%s): following the session log", how)
        await self.follower.follow_now()

    async def live_daemons(self) -> set[str]:
        return set(await self.bus.kv_keys(KV_DAEMONS))

    async def members(self) -> list[dict[str, Any]]:
        """Every live daemon's heartbeat record with its `daemonId`, by id (what `/api/daemon/status` shows)."""
        out = []
        for key in sorted(await self.live_daemons()):
            found = await self.bus.kv_get(KV_DAEMONS, key)
            if found is not None:
                out.append({"daemonId": key, **found[0]})
        return out

    async def process_of(self, daemon_id: str) -> tuple[Any, Any] | None:
        """(pid, startedAt) of the process whose heartbeat answers for `daemon_id` now; None once it has expired.
        A daemon id outlives its processes (a restart keeps it), so this tells a restarted daemon from the one
        before it."""
        found = await self.bus.kv_get(KV_DAEMONS, daemon_id)
        if found is None:
            return None
        return found[0].get("pid"), found[0].get("startedAt")

    async def is_daemon_alive(self, daemon_id: str | None) -> bool:
        """A daemon is alive while its heartbeat entry has not expired: one read from the leader of DAEMONS, since a
        replica catching up after a node loss can lack a live daemon's heartbeat, and a runner wrongly taken for
        dead gets its sessions interrupted."""
        if not daemon_id:
            return False
        return daemon_id == self.daemon_id or await self.bus.kv_get_from_leader(KV_DAEMONS, daemon_id) is not None
