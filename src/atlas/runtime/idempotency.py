"""Idempotency-Key handling (spec §4.5): one key, one session, across retries, restarts and daemons.

The record lives in KV `IDEMPOTENCY` under `<ws>.<sig>.<sha256(key)>`. A reservation is an atomic create, so two
concurrent requests never both win; the loser waits for the winner's answer and replays it. A replay reads the
record first (one round trip), which keeps it no slower than a fresh trigger.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atlas.bus.client import KV_IDEMPOTENCY, WrongLastSequence
from atlas.errors import AtlasError
from atlas.sessions.events import now_iso

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

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
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def reserve(self, workspace_id: str, signal_id: str, key: str, body: bytes) -> Reservation:
        check_key(key)
        k = kv_key(workspace_id, signal_id, key)
        body_hash = hashlib.sha256(body).hexdigest()
        deadline = time.monotonic() + PENDING_WAIT_S
        while True:
            found = await self.d.bus.kv_get(KV_IDEMPOTENCY, k)
            if found is None:
                record = {"state": "pending", "bodyHash": body_hash, "owner": self.d.daemon_id, "createdAt": now_iso()}
                try:
                    await self.d.bus.kv_create(KV_IDEMPOTENCY, k, record)
                    return Reservation(k, body_hash)
                except WrongLastSequence:
                    continue
            record, _ = found
            if record.get("bodyHash") != body_hash:
                raise AtlasError("idempotency_key_mismatch",
                                 "This Idempotency-Key was used with a different request body")
            if record.get("state") == "accepted":
                return Reservation(k, body_hash, replay=record)
            if record.get("owner") != self.d.daemon_id and not await self.d.is_daemon_alive(record.get("owner")):
                await self.d.bus.kv_delete(KV_IDEMPOTENCY, k)  # its owner is gone: the key counts as released
                continue
            if time.monotonic() > deadline:
                raise AtlasError("idempotency_key_in_progress", "A request with this Idempotency-Key is in flight")
            await asyncio.sleep(0.02)  # poll the winner's record until it is accepted

    async def accepted(self, res: Reservation, record: dict[str, Any]) -> None:
        await self.d.bus.kv_put(KV_IDEMPOTENCY, res.key, {"state": "accepted", "bodyHash": res.body_hash, **record})

    async def release(self, res: Reservation) -> None:
        await self.d.bus.kv_delete(KV_IDEMPOTENCY, res.key)
