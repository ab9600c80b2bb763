"""Host allow-list, Origin check, bearer token and CORS (spec §10). Placeholder until implemented."""

from __future__ import annotations

from fastapi import FastAPI

from atlas.config.settings import Settings


def install_security(app: FastAPI, settings: Settings) -> None:
    """Install the security middleware on `app` (no-op placeholder)."""
