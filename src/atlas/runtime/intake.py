"""Whether this daemon takes new work right now: not while it shuts down, and not while the bus cannot write.

Why apart: the accept pipeline (every trigger), the scheduler (before each slot it fires) and the composition root
(which closes it at shutdown) share this one switch; before, each reached into the daemon for it.
"""

from __future__ import annotations

from typing import Protocol

from atlas.errors import AtlasError

__all__ = ["Intake", "Writability"]


class Writability(Protocol):
    """The bus's health as intake sees it (`atlas.bus.health.BusHealth`)."""

    @property
    def writable(self) -> bool:
        """Connected, and its store can write (not out of disk)."""
        ...


class Intake:
    def __init__(self, *, health: Writability) -> None:
        self.health = health
        self.closed = False

    def close(self) -> None:
        """No new work from here on (shutdown, spec §8.4)."""
        self.closed = True

    def check(self) -> None:
        """Raise `shutting_down` or `bus_unavailable` when a trigger cannot be taken now."""
        if self.closed:
            raise AtlasError("shutting_down", "The daemon is shutting down")
        if not self.health.writable:  # disconnected, or its store cannot write (disk full)
            raise AtlasError("bus_unavailable", "The message bus is unavailable")

    @property
    def accepting(self) -> bool:
        return not self.closed and self.health.writable
