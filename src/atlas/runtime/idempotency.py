"""Idempotency-Key handling (spec §4.5): one key, one session, across retries, restarts and daemons.

The record lives in KV `IDEMPOTENCY` under `<ws>.<sig>.<sha256(key)>`. A reservation is an atomic create, so two
concurrent requests never both win; the loser waits for the winner's answer and replays it. A replay reads the
record first (one round trip), which keeps it no slower than a fresh trigger.

A `pending` entry also names the daemon *process* that made it (`ownerPid`, `ownerStartedAt`: what that process
writes in its `DAEMONS` heartbeat), because a daemon id outlives its processes: after a kill -9 the same home
restarts with the same id and a fresh heartbeat, and the id alone would keep the dead process's entry "in flight"
until the bucket's TTL (24 h). So an entry counts as released (spec §4.5) as soon as its owner process is gone:
made by another process of this daemon id (only one runs per home, so it ended before this one started), or by a
daemon whose heartbeat expired or now comes from another process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from atlas.bus.client import KV_IDEMPOTENCY, Bus, WrongLastSequence
from atlas.errors import AtlasError
from atlas.sessions.events import now_iso

PENDING_WAIT_S = 5.0


def check_key(key: str) -> None:
    if not 1 <= len(key) <= 255 or any(not (32 <= ord(c) < 127) for c in key):
        raise AtlasError("invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters")


def kv_key(workspace_id: str, signal_id: str, key: str) -> str:
    return f"{workspace_id}.{signal_id}.{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass
class Reservation:
    """Either ours to fill (`replay is None`) or a finished record to answer from."""

    key: str
    body_hash: str
    replay: dict[str, Any] | None = None


class Idempotency:
    def __init__(self, *, bus: Bus, daemon_id: str, started_at: str,
                 process_of: Callable[[str], Awaitable[tuple[Any, Any] | None]]) -> None:
        """`daemon_id` and `started_at` name this daemon process, as its heartbeat does; `process_of(id)` is the
        (pid, startedAt) of the process a daemon's live heartbeat names (None: expired), from the membership."""
        self.bus = bus
        self.daemon_id = daemon_id
        self.started_at = started_at
        self.process_of = process_of

    async def reserve(self, workspace_id: str, signal_id: str, key: str, body: bytes) -> Reservation:
        check_key(key)
        k = kv_key(workspace_id, signal_id, key)
        body_hash = hashlib.sha256(body).hexdigest()
        deadline = time.monotonic() + PENDING_WAIT_S
        while True:
            found = await self.bus.kv_get(KV_IDEMPOTENCY, k)
            if found is None:
                try:
                    await self.bus.kv_create(KV_IDEMPOTENCY, k, self._pending(body_hash))
                    return Reservation(k, body_hash)
                except WrongLastSequence:
                    continue
            record, revision = found
            if record.get("bodyHash") != body_hash:
                raise AtlasError("idempotency_key_mismatch",
                                 "This Idempotency-Key was used with a different request body")
            if record.get("state") == "accepted":
                return Reservation(k, body_hash, replay=record)
            if await self._owner_gone(record):
                # Released: take it over with a compare-and-set, so that of several requests finding the same
                # stale entry one wins and the others wait for its answer (a delete could drop a winner's entry).
                try:
                    await self.bus.kv_update(KV_IDEMPOTENCY, k, self._pending(body_hash), revision)
                    return Reservation(k, body_hash)
                except WrongLastSequence:
                    continue
            if time.monotonic() > deadline:
                raise AtlasError("idempotency_key_in_progress", "A request with this Idempotency-Key is in flight")
            await asyncio.sleep(0.02)  # poll the winner's record until it is accepted

    def _pending(self, body_hash: str) -> dict[str, Any]:
        return {"state": "pending", "bodyHash": body_hash, "owner": self.daemon_id, "ownerPid": os.getpid(),
                "ownerStartedAt": self.started_at, "createdAt": now_iso()}

    async def _owner_gone(self, record: dict[str, Any]) -> bool:
        """Whether the process that reserved this pending entry is gone, so the entry counts as released."""
        owner = record.get("owner")
        if not owner:
            return True
        if owner == self.daemon_id:
            # One process per home (and so per daemon id) at a time: an entry of this id that another process
            # made (or an older version, which did not name its process) predates this one, and its maker is gone.
            return not _made_by(record, os.getpid(), self.started_at)
        beat = await self.process_of(owner)
        if beat is None:
            return True  # the owner's heartbeat expired (spec §8.1)
        if "ownerStartedAt" not in record:
            return False  # from an older daemon: its id's heartbeat is all there is to go on
        return not _made_by(record, *beat)

    async def accepted(self, res: Reservation, record: dict[str, Any]) -> None:
        await self.bus.kv_put(KV_IDEMPOTENCY, res.key, {"state": "accepted", "bodyHash": res.body_hash, **record})

    async def release(self, res: Reservation) -> None:
        await self.bus.kv_delete(KV_IDEMPOTENCY, res.key)


def _made_by(record: dict[str, Any], pid: Any, started_at: Any) -> bool:
    """Whether a pending entry was made by the process with this pid and start time (both, as pids are reused,
    e.g. a daemon that is always pid 1 in its container)."""
    return bool(record.get("ownerPid") == pid and record.get("ownerStartedAt") == started_at)
