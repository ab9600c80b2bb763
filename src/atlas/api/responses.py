"""Small response helpers shared by the routes: compact JSON bytes and the bounded body reader (error answers are
`atlas.api.errors`)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from atlas.api.body import read_body
from atlas.jsoncodec import dumps

__all__ = ["json_response", "read_body"]  # read_body lives with the other body rules


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = dumps(body)
    return Response(data, status_code=status, media_type="application/json", headers=headers)
