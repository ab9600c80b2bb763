"""Durations as written in workspace files and settings: `<int><unit>` with unit ms, s, m, h (and d for settings).

Spec: durations MUST be > 0; a bare number is accepted only where a caller says so (e.g. atlas/count's interval).
"""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PATTERN = re.compile(r"^(\d+)(ms|s|m|h|d)$")


def parse_duration(text: str, *, allow_days: bool = False, allow_zero: bool = False) -> float:
    """Return the duration in seconds; raise ValueError with a readable message otherwise."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None or (match.group(2) == "d" and not allow_days):
        units = "ms, s, m, h" + (", d" if allow_days else "")
        raise ValueError(f"invalid duration {text!r}: expected <integer><unit> with unit {units}")
    value = int(match.group(1)) * _UNITS_MS[match.group(2)]
    if value <= 0 and not allow_zero:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return value / 1000.0


def format_ms(ms: float) -> str:
    """Short human form, e.g. 1500 → '1.5s'."""
    if ms < 1000:
        return f"{int(ms)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{int(ms // 60_000)}m{int(ms % 60_000 // 1000)}s"
