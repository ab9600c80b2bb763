"""Small response helpers shared by the routes: compact JSON bytes and the bounded body reader."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from atlas.errors import ApiError
from atlas.jsoncodec import dumps


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = dumps(body)
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def error_response(err: ApiError) -> Response:
    return json_response(err.body(), err.status, err.headers)


async def read_body(request: Request, max_body: int) -> bytes:
    """Read the body, refusing more than ATLAS_MAX_BODY from Content-Length or while streaming (413)."""
    length = request.headers.get("content-length")
    too_big = ApiError(413, "body_too_large", f"Request body exceeds {max_body} bytes")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
