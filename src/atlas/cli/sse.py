"""A small Server-Sent Events parser over an httpx streaming response (the daemon's SSE endpoints, spec §9)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class Frame:
    event: str  # "message" when the frame has no `event:` line
    data: str
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[Frame]:
    """Frames from text lines (without their line endings); comments (`: keep-alive`) are skipped."""
    event, ident = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data or event:
                yield Frame(event or "message", "\n".join(data), ident)
            event, data, ident = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            ident = value
    if data:
        yield Frame(event or "message", "\n".join(data), ident)
