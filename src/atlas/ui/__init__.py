"""The web UI: static ES modules, CSS and HTML served by the daemon itself (spec §12). Placeholder."""

from __future__ import annotations

from fastapi import FastAPI


def mount_ui(app: FastAPI) -> None:
    """Serve the UI at `/` (placeholder: no UI yet)."""
