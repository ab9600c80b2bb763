"""A session's place in its tree, as this daemon's read model knows it: alive or not, its ancestors, its live
descendants.

Why apart: the concurrency control (deadlocks, dead holders), the consumer (a cancelled ancestor), recovery (dead
holders) and cancellation (cancel a tree) all ask these questions; they get this small object, not the store's
whole surface and not a daemon.
"""

from __future__ import annotations

from atlas.sessions.reducer import is_terminal
from atlas.sessions.store import SessionStore

__all__ = ["Lineage"]

MAX_ANCESTORS = 64


class Lineage:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def is_alive(self, sid: str) -> bool:
        """Not terminal. A session this daemon has not materialised yet (accepted elsewhere a moment ago) counts
        as alive: treating it as gone would let two daemons both admit a `skip` key."""
        view = self.store.view(sid)
        return view is None or not is_terminal(view["status"])

    def ancestors(self, sid: str) -> set[str]:
        """The session's parent chain (at most 64: deeper trees are refused at accept anyway)."""
        out: set[str] = set()
        view = self.store.identity(sid)
        while view is not None and view.get("parentSessionId") and len(out) < MAX_ANCESTORS:
            parent = view["parentSessionId"]
            out.add(parent)
            view = self.store.identity(parent)
        return out

    def live_descendants(self, sid: str) -> list[str]:
        """Every descendant that has not ended yet (what cancelling the tree must reach)."""
        return [d for d in self.store.rm.descendants(sid) if self.is_alive(d)]
