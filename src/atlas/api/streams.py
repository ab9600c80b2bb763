"""SSE session streams (spec §9 "Per-session stream", "Tree stream"). Placeholder until implemented."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon


def add_stream_routes(app: FastAPI, daemon: Daemon) -> None:
    """Add GET /api/sessions/stream and GET /api/sessions/{id}/stream (no-op placeholder)."""
