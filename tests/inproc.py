"""An in-process daemon for tests that need its internals (store, bus, recovery) next to the real nats-server."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from atlas.config.settings import Settings
from atlas.runtime.daemon import Daemon


@contextlib.asynccontextmanager
async def running(home: Path, workspaces: Sequence[Path], nats_url: str | None = None,
                  **overrides: object) -> AsyncIterator[Daemon]:
    """Start a daemon on `home` with `workspaces` (and settings `overrides`); stopped on exit, whatever happened."""
    settings = Settings.from_env().with_overrides(home=home, workspaces=tuple(workspaces), **overrides)
    daemon = Daemon(dataclasses.replace(settings, nats_url=nats_url))
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()
