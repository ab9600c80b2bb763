"""Whether the bus can take writes, and getting it back by itself after the disk filled (issue #19, bug 9).

What nats-server 2.15 does when its store's filesystem is full (reproduced on a full tmpfs, see
tests/test_disk_full.py): the write of a message that needs a new page fails with ENOSPC, the server logs
"Critical write error" and keeps that error on the stream's store. From then on every publish to that stream goes
unanswered — even once space is back — until the server restarts; JetStream stays enabled and stream and account
infos look healthy, so nothing a client can ask tells the difference. A stream that happened not to need a new page
goes on working, so one healthy write proves nothing about the others either.

So the monitor watches the two things that do tell, for the embedded server it owns: the free space of the store's
filesystem (checked every half second; below `LOW_SPACE_BYTES` the bus is `degraded` and triggers are refused at
once instead of each waiting out its publish timeout), and the server's log, for a critical write error that
happened between two checks. Once either has been seen and space is back, the child is restarted on the same store,
token and port: clients reconnect by themselves, and nothing acknowledged is lost (an acknowledged message is in its
block file; the failed ones were never acknowledged). A restart while the disk is still full would only fail to
load the streams, so it waits for space.

An external server (`ATLAS_NATS_URL`) is not ours to restart or inspect: there the bus is `degraded` only while the
connection is down, and its operator frees space and restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path

from atlas.bus.client import Bus
from atlas.bus.server import BusError, EmbeddedNats

__all__ = ["LOW_SPACE_BYTES", "BusHealth"]

log = logging.getLogger("atlas.bus.health")

LOW_SPACE_BYTES = 1 << 20
"""Below this much free space on the store's filesystem the bus counts as unable to write: JetStream appends to
block files page by page, and a session's events need more than a few pages."""

CHECK_INTERVAL_S = 0.5
RESTART_BACKOFF_S = 2.0
"""At least this long between two restarts, should the disk fill again at once."""

_LOG_CHUNK = 1 << 20
_WRITE_ERROR = re.compile(rb"Critical write error|no space left on device", re.IGNORECASE)


class BusHealth:
    """`status` is "ok" or "degraded" (`reason` says why); `writable` is what the accept path asks."""

    def __init__(self, bus: Bus, embedded: EmbeddedNats | None, *, interval: float = CHECK_INTERVAL_S,
                 low_space: int = LOW_SPACE_BYTES) -> None:
        self.bus = bus
        self.embedded = embedded
        self.interval = interval
        self.low_space = low_space
        self.reason: str | None = None
        self.restarts = 0
        # Space ran out, or a write failed, since the child last started: some of its streams may be broken.
        self._store_broken = False
        self._last_restart = 0.0
        self._log_offset = self._log_size()

    @property
    def status(self) -> str:
        return "ok" if self.writable else "degraded"

    @property
    def writable(self) -> bool:
        """Whether a write has a chance: connected, and nothing known to be wrong with the server's store."""
        return self.reason is None and self.bus.connected

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled; a failing check is logged, never fatal."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus health check failed")
            await asyncio.sleep(self.interval)  # the check's period, not a synchronisation

    async def check(self) -> None:
        """One look at the bus; restarts the embedded server when its store was broken and space is back."""
        reason = None
        if self.embedded is not None:
            free = _free_bytes(self.embedded.dir)
            if self._write_error_logged():
                self._note_broken("nats-server reported a failed write to its store")
            if free is not None and free < self.low_space:
                self._note_broken(f"the bus store's disk is full ({free} bytes free)")
                reason = f"the disk of the bus store is full ({free} bytes free)"
            elif self._store_broken:
                reason = "the bus store is restarting after a failed write"
                if time.monotonic() - self._last_restart >= RESTART_BACKOFF_S:
                    await self._restart()
                    reason = None
        if reason is None and not self.bus.connected:
            reason = "not connected to the bus"
        if reason != self.reason:
            if reason is None:
                log.info("bus healthy again")
            else:
                log.warning("bus degraded: %s", reason)
        self.reason = reason

    def _note_broken(self, why: str) -> None:
        if not self._store_broken:
            log.warning("%s: nats-server will be restarted on the same store once there is space", why)
        self._store_broken = True

    async def _restart(self) -> None:
        assert self.embedded is not None
        self._last_restart = time.monotonic()
        log.warning("restarting nats-server to clear the write errors of its store")
        try:
            await self.embedded.restart()
        except BusError as exc:
            log.error("nats-server restart failed: %s", exc)  # its supervisor takes over from here
            return
        self.restarts += 1
        self._store_broken = False
        self._log_offset = self._log_size()  # what the old child logged is settled by the restart

    # -- the server's log ----

    def _log_size(self) -> int:
        if self.embedded is None:
            return 0
        try:
            return self.embedded.log_path.stat().st_size
        except OSError:
            return 0

    def _write_error_logged(self) -> bool:
        """Whether nats.log got a line about a failed store write since the last look. The log may itself have
        failed to get that line on a full disk, which is why free space is watched too."""
        assert self.embedded is not None
        size = self._log_size()
        if size < self._log_offset:  # rotated at a (supervised) restart: read the new file from its start
            self._log_offset = 0
        if size == self._log_offset:
            return False
        try:
            with open(self.embedded.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read(min(size - self._log_offset, _LOG_CHUNK))
        except OSError:
            return False
        self._log_offset += len(text)
        return _WRITE_ERROR.search(text) is not None


def _free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of `directory` (None if it cannot be told)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
