"""One daemon per home: an OS lock on `$ATLAS_HOME/daemon.lock` (issue #19, bug 3).

`daemon.json` is written only once a daemon is up, so it cannot stop a second daemon started at the same moment
on the same home; that second one used to stop the first one's live nats-server as a "leftover", rewrite the broker
token and put a second server on the JetStream store. `atlas daemon start` therefore takes this lock before it
touches anything under the home (daemon-id, nats/, atlas.db, daemon.json) and the daemon process holds it for its
whole life.

`flock` rather than a pid file: the kernel drops the lock when the holding process dies, however it dies
(`kill -9` included), so a crash never leaves a stale lock behind. The descriptor is opened close-on-exec, so the
nats-server child (or any other child) never inherits it and cannot keep the home locked after the daemon is gone.
The holder writes its pid into the file, for the message the loser prints; the lock itself is what counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "HomeLock", "lock_holder"]

LOCK_NAME = "daemon.lock"


class HomeLock:
    """The exclusive lock on one home, held until :meth:`release` or until the process exits."""

    def __init__(self, home: Path, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Path) -> HomeLock | None:
        """Take the home's lock without waiting; None when another process (or another open here) holds it.

        Creating the home (0700) and the lock file (0600) is the only thing done before the lock is held.
        """
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # the pid is informative only: the lock stands without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(home, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the home up (closing the descriptor drops the flock). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def lock_holder(home: Path) -> int | None:
    """The pid the current holder wrote into the lock file, if it is readable (for messages only)."""
    try:
        text = (home / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
