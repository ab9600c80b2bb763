"""The OpenAPI 3.1 document served at /openapi.json (spec §9). Placeholder: FastAPI's generated document."""

from __future__ import annotations

from fastapi import FastAPI


def install_openapi(app: FastAPI) -> None:
    """Replace the generated document with an accurate hand-written one (placeholder)."""
