"""Fuzzing bad input (issue 7 item 4): the loader and the HTTP API never crash, always answer cleanly."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.config.loader import load_workspace
from tests.daemon_proc import DaemonProcess

# ---------------------------------------------------------------- workspace loader

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
KEYS = ["version", "workspace", "signals", "jobs", "agents", "provider", "config", "fsm", "execution", "states",
        "initial", "entry", "on", "type", "agentId", "target", "triggers", "signal", "schema", "concurrency"]
structured = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)


def _dump(value: object) -> str:
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(value, out)
    return out.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400))
def test_random_text_gives_config_or_clean_errors(tmp_path: Path, text: str) -> None:
    f = tmp_path / "workspace.yml"
    f.write_text(text)
    loaded = load_workspace(f)
    assert (loaded.config is not None) != bool(loaded.errors)
    for err in loaded.errors:
        assert err.line >= 1 and err.column >= 1 and err.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(yaml_values, structured))
def test_random_yaml_documents_give_config_or_clean_errors(tmp_path: Path, doc: object) -> None:
    f = tmp_path / "workspace.yml"
    f.write_text(_dump(doc))
    loaded = load_workspace(f)
    assert (loaded.config is not None) != bool(loaded.errors)
    assert all(e.format().startswith(str(f)) for e in loaded.errors)


# ---------------------------------------------------------------- HTTP


def _json_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code


def test_nasty_bodies_get_json_errors_and_the_daemon_stays_up(daemon: DaemonProcess) -> None:
    url = f"{daemon.url}/api/workspaces/core/signals/echo?nowait=true"
    json_headers = {"Content-Type": "application/json"}
    _json_error(httpx.post(url, content=b"x" * (10 * 1024 * 1024), headers=json_headers, timeout=60), 413,
                "body_too_large")
    deep = b'{"payload": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"
    _json_error(httpx.post(url, content=deep, headers=json_headers), 400, "payload_too_complex")
    very_deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(url, content=very_deep, headers=json_headers)
    _json_error(r, 400, "payload_too_complex")
    _json_error(httpx.post(url, content=b'{"payload": {"s": "\xff\xfe"}}', headers=json_headers), 400,
                "invalid_json")
    r = httpx.post(url, content=b'{"payload": {"s": "a\\u0000b"}}', headers=json_headers)
    assert r.status_code == 202  # a NUL inside a JSON string is data, not an attack
    _json_error(httpx.post(url, content=b"\x00\x00\x00", headers=json_headers), 400, "invalid_json")
    many = b'{"payload": {"list": [' + b",".join(b"1" for _ in range(100_500)) + b"]}}"
    _json_error(httpx.post(url, content=many, headers=json_headers), 400, "payload_too_complex")
    # Huge headers: the HTTP server refuses them without an exception escaping.
    with socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in reply
    assert httpx.get(f"{daemon.url}/health").json()["status"] == "ok"


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300), ctype=st.sampled_from(["application/json", "text/plain", "", "application/xml"]))
def test_random_bodies_never_cause_a_server_error(daemon: DaemonProcess, body: bytes, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(f"{daemon.url}/api/workspaces/core/signals/echo?nowait=true", content=body, headers=headers)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
