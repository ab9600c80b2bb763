"""The one JSON codec of everything atlas publishes, stores and answers: orjson, with the standard library behind it.

Why: every trigger encodes an envelope, a handful of events, two read-model documents and an answer, and decodes
the body, the acks and the events coming back — a tenth of the event loop's time under load with `json`. orjson
does the same work several times faster. It is stricter, and in two places it would silently differ from `json`,
so those go to the standard library instead and keep its exact results and errors:

- decoding: an integer beyond 64 bits becomes a float in orjson (a payload's exact big integer would change);
  any text with a run of 19 or more digits is decoded by `json`. Text orjson refuses (NaN, a BOM, UTF-16, a lone
  surrogate escape, very deep nesting) is handed to `json` too, which accepts or refuses it as before.
- encoding: what orjson refuses (integers beyond 64 bits, non-string keys, lone surrogates, datetimes, dataclasses
  and other objects) is encoded by `json`, which succeeds or raises as it always did. One difference is kept:
  orjson writes a non-finite float as ``null`` where `json` wrote the non-JSON ``NaN``/``Infinity``.

The output is compact (no spaces) with UTF-8 kept as is; floats may be spelled differently (``1e-05`` vs
``0.00001``) but denote the same number.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["dumps", "loads", "to_json"]

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_LONG_DIGITS = re.compile(rb"\d{19}")
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes, the wire form of events, envelopes, documents and answers."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        return _ENCODER.encode(value).encode()


def to_json(value: Any) -> str:
    """`dumps` as text (SQLite columns)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:
        return _ENCODER.encode(value)


def loads(data: bytes | bytearray | str) -> Any:
    """Decode JSON as `json.loads` would (same values, same acceptance), at orjson's speed when that is safe."""
    if isinstance(data, str):
        if _LONG_DIGITS_TEXT.search(data):
            return json.loads(data)
    elif _LONG_DIGITS.search(data):
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
