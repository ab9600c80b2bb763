"""Liveness is read from the leader of DAEMONS (issue #19, bug 14's long chaos variant).

A replica catching up after a node loss answered a direct get without a live daemon's heartbeat, and that daemon's
running sessions were interrupted by another daemon. `Bus.kv_get_from_leader` is the read that decides liveness; it
must see what the bucket holds, including deletes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from atlas.bus.client import KV_DAEMONS
from tests.daemon_proc import FIXTURES
from tests.inproc import running


async def test_a_heartbeat_read_from_the_leader_follows_puts_and_deletes(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        other = str(uuid.uuid4())
        assert await d.bus.kv_get_from_leader(KV_DAEMONS, other) is None
        assert not await d.is_daemon_alive(other)

        await d.bus.kv_put(KV_DAEMONS, other, {"url": "http://127.0.0.1:1", "pid": 1})
        assert await d.bus.kv_get_from_leader(KV_DAEMONS, other) == {"url": "http://127.0.0.1:1", "pid": 1}
        assert await d.is_daemon_alive(other)

        await d.bus.kv_delete(KV_DAEMONS, other)
        assert await d.bus.kv_get_from_leader(KV_DAEMONS, other) is None
        assert not await d.is_daemon_alive(other)
        assert await d.is_daemon_alive(d.daemon_id)
