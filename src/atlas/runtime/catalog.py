"""The cluster's workspace registry (spec §6.7): the `WORKSPACES` bucket, and loading what it lists at start.

Why apart from `WorkspaceRegistry` (this daemon's loaded workspaces): registering is a bus write every daemon of the
cluster reads at start, and its record is built here and nowhere else (`atlas.bus.records`), whether the
workspace came from the command line or from an API client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from atlas.bus.client import KV_WORKSPACES, Bus
from atlas.bus.records import workspace_registration
from atlas.errors import AtlasError
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry

__all__ = ["WorkspaceCatalog"]

log = logging.getLogger("atlas.daemon")


class WorkspaceCatalog:
    def __init__(self, *, bus: Bus, workspaces: WorkspaceRegistry) -> None:
        self.bus = bus
        self.workspaces = workspaces

    async def load(self, explicit: Sequence[Path], roots: Sequence[Path]) -> None:
        """Workspaces from the WORKSPACES registry plus those named on the command line (`explicit`).

        Loads run off the event loop like an API add. Registered workspaces came from API clients (of this daemon
        or of another one on the cluster), so `ATLAS_WORKSPACE_ROOTS` (`roots`) applies to them as it does to an
        add; the operator's own `--workspace` paths are trusted as given.
        """
        registered = {}
        for key in await self.bus.kv_keys(KV_WORKSPACES):
            found = await self.bus.kv_get(KV_WORKSPACES, key)
            if found is not None:
                registered[key] = found[0]
        given = set(explicit)  # already absolute (the CLI resolves them)
        for ws_id, entry in registered.items():
            if Path(entry["path"]) in given:
                continue
            try:
                await self.workspaces.add(entry["path"], roots)
            except AtlasError as exc:
                log.warning("registered workspace %s (%s) not loaded: %s", ws_id, entry["path"], exc.message)
        for path in explicit:
            await self.add(path)

    async def add(self, path: str | Path, roots: Sequence[Path] = ()) -> tuple[Workspace, bool]:
        """Load (or reload) the workspace at `path` and register it in WORKSPACES, where every daemon of the
        cluster finds it at start; returns it and whether it is new (`roots`: see `WorkspaceRegistry.add`)."""
        ws, created = await self.workspaces.add(path, roots)
        record = workspace_registration(path=str(ws.path), config_digest=ws.loaded.digest, added_at=ws.created_at)
        await self.bus.kv_put(KV_WORKSPACES, ws.id, record)
        return ws, created

    async def remove(self, workspace_id: str) -> None:
        """Forget a workspace here and in WORKSPACES (its sessions are the caller's business)."""
        self.workspaces.remove(workspace_id)
        await self.bus.kv_delete(KV_WORKSPACES, workspace_id)
