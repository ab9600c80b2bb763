"""The code → HTTP status table of `atlas.api.errors` covers every code the sources raise, and agrees with the
statuses `/openapi.json` documents for each code (the domain never names a status itself)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from atlas.api.errors import STATUS, error_response
from atlas.api.openapi import build_openapi

SRC = Path(__file__).resolve().parents[1] / "src" / "atlas"
START_UP_ONLY = {"invalid_settings"}  # stops atlasd before it serves: never an HTTP answer
RAISED = re.compile(r'AtlasError\(\s*"([^"]+)"')


def _raised_codes() -> set[str]:
    codes: set[str] = set()
    for path in SRC.rglob("*.py"):
        codes.update(RAISED.findall(path.read_text()))
    return codes


def _documented(doc: dict[str, Any]) -> dict[str, set[int]]:
    """code → every status whose documented error responses list it."""
    out: dict[str, set[int]] = {}
    for operations in doc["paths"].values():
        for op in operations.values():
            if not isinstance(op, dict):  # path-level `parameters`
                continue
            for status, answer in op.get("responses", {}).items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", []):
                    codes = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
                    for code in codes.get("enum", []):
                        out.setdefault(code, set()).add(int(status))
    return out


def test_every_raised_code_has_a_status() -> None:
    raised = _raised_codes()
    assert {"workspace_not_found", "bus_unavailable", "payload_invalid"} <= raised  # the scan finds the sites
    assert raised - START_UP_ONLY - STATUS.keys() == set()


def test_the_runtime_names_no_http_status() -> None:
    for path in (SRC / "runtime").rglob("*.py"):
        text = path.read_text()
        assert "atlas.api" not in text, path
        assert not re.search(r"\bstatus_code\b|HTTPException", text), path


def test_documented_statuses_match_the_table() -> None:
    documented = _documented(build_openapi())
    assert documented, "no error codes found in /openapi.json"
    for code, statuses in documented.items():
        assert statuses == {STATUS[code]}, (code, statuses)
    # Every code a route can answer with is in some operation's error table (the few that answer any request
    # are in the document's description, and nobody reads `client_disconnected`).
    answered_anywhere = {"not_found", "method_not_allowed", "request_timeout", "headers_too_large",
                         "client_disconnected"}
    assert STATUS.keys() - documented.keys() == answered_anywhere


def test_a_code_brings_its_headers_and_body_shape() -> None:
    busy = error_response("idempotency_key_in_progress", "in flight")
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert busy.body == b'{"error":{"code":"idempotency_key_in_progress","message":"in flight"}}'
    internal = error_response("internal_error", "boom", {"requestId": "ab"}, {"X-Request-Id": "ab"})
    assert internal.status_code == 500 and internal.headers["x-request-id"] == "ab"
    assert error_response("no_such_code_anywhere", "?").status_code == 500
