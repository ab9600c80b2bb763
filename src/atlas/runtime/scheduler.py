"""Cron schedules (spec §5.6). Placeholder until implemented."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon


class Scheduler:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def start(self) -> None:
        """Start firing schedule signals of the loaded workspaces (placeholder)."""

    async def stop(self) -> None:
        """Stop firing (placeholder)."""
