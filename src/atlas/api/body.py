"""Request bodies: reading one within ATLAS_MAX_BODY, and (spec §5.2) telling an envelope from a webhook.

The envelope rules are kept apart from the route so the precedence rules are one small pure function, tested on
their own. How long a client may take to send its body is the HTTP server's business (`atlas.cli.serve`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from atlas.errors import AtlasError

# The reference's envelope keys. `skipStates` and `bypassConcurrency` belong here too (issue #14): read as payload
# keys they used to turn the request into a webhook.
ENVELOPE_KEYS = {"payload", "streamId", "parentSessionId", "skipStates", "bypassConcurrency"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
REDACTED = {"authorization", "cookie"}


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(rb"\d{19}")  # integers beyond 64 bits: orjson would make them floats


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: refusing them keeps every stored event valid JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    """`1e400` would decode to infinity, which is no more JSON than `Infinity` is."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _decode(raw: bytes) -> Any:
    """The body as JSON (RFC 8259, UTF-8). orjson takes what it can, and that is always what `json` would return
    (`atlas.jsoncodec`); everything else — including every malformed body — gets `json`'s answer and message."""
    if not _LONG_DIGITS.search(raw):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite)
    if _SURROGATE_ESCAPE.search(raw):
        json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate cannot be stored as UTF-8
    return data


def _too_big(max_body: int) -> AtlasError:
    return AtlasError("body_too_large", f"Request body exceeds {max_body} bytes")


async def read_body(request: Request, max_body: int) -> bytes:
    """Read the body, refusing more than ATLAS_MAX_BODY from Content-Length or while streaming (413).

    A client that goes away before its body is complete (or is cut off by the server's read deadline) is not an
    error of ours: it becomes a plain `client_disconnected` AtlasError, which nobody will read, rather than an
    exception the catch-all handler would log as an internal error with a traceback.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise _too_big(max_body)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise _too_big(max_body)
            chunks.append(chunk)
    except ClientDisconnect:
        raise AtlasError("client_disconnected", "The client went away before sending the whole body") from None
    return b"".join(chunks)


@dataclass
class TriggerBody:
    payload: Any
    stream_id: str | None = None
    parent_session_id: str | None = None
    webhook: dict[str, Any] | None = None
    skip_states: list[str] | None = None


def _is_json(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct == "" or ct == "application/json" or ct.endswith("+json")


def webhook_record(raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """Headers lower-cased, hop-by-hop dropped, authorization and cookie redacted; the body as base64."""
    kept = {k.lower(): ("***" if k.lower() in REDACTED else v) for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP}
    return {"headers": kept, "bodyBase64": base64.b64encode(raw).decode()}


def parse_json(raw: bytes) -> Any:
    """A JSON body by the trigger's rules (strict RFC 8259: no NaN, no lone surrogates), refused as the trigger
    refuses one (`invalid_json`, `payload_too_complex`), for routes that take only JSON (the re-run)."""
    try:
        return _decode(raw)
    except UnicodeEncodeError:
        raise AtlasError("invalid_json", "Malformed JSON body: lone surrogate escape in a string") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AtlasError("invalid_json", f"Malformed JSON body: {exc}") from None
    except RecursionError:
        raise AtlasError("payload_too_complex", "The JSON body is nested too deeply") from None


def parse_trigger_body(raw: bytes, headers: Mapping[str, str]) -> TriggerBody:
    content_type = headers.get("content-type", "")
    if not raw.strip():
        return TriggerBody(payload={})
    if not _is_json(content_type):
        return TriggerBody(payload=None, webhook=webhook_record(raw, headers))
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise AtlasError("invalid_body", "The body must be a JSON object")
    if not set(data) <= ENVELOPE_KEYS:
        return TriggerBody(payload=data, webhook=webhook_record(raw, headers))
    details = []
    payload = data.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        details.append({"path": "payload", "message": "must be an object"})
    for key in ("streamId", "parentSessionId"):
        if key in data and not isinstance(data[key], str):
            details.append({"path": key, "message": "must be a string"})
    skip = data.get("skipStates")
    if skip is not None and (not isinstance(skip, list) or not all(isinstance(s, str) for s in skip)):
        details.append({"path": "skipStates", "message": "must be a list of state ids (strings)"})
    bypass = data.get("bypassConcurrency")
    if bypass is not None and not isinstance(bypass, bool):
        details.append({"path": "bypassConcurrency", "message": "must be a boolean"})
    if details:
        raise AtlasError("invalid_body", "Invalid envelope", details)
    if bypass:
        # The reference keeps it for its chat's own job tools; atlas's chat bypasses in-process, never over HTTP.
        raise AtlasError("bypass_not_allowed", "bypassConcurrency is internal: an HTTP caller cannot bypass the "
                                               "signal's concurrency policy")
    return TriggerBody(payload=payload, stream_id=data.get("streamId"), parent_session_id=data.get("parentSessionId"),
                       skip_states=list(skip) if skip else None)
