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
        reply = b""
        while b'"}}' not in reply:  # headers and body may arrive in separate segments
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in reply
    assert httpx.get(f"{daemon.url}/health").json()["status"] == "ok"


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300), ctype=st.sampled_from(["application/json", "text/plain", "", "application/xml"]))
def test_random_bodies_never_cause_a_server_error(daemon: DaemonProcess, body: bytes, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(f"{daemon.url}/api/workspaces/core/signals/echo?nowait=true", content=body, headers=headers)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")


def test_bodies_that_cannot_be_stored_are_refused(daemon: DaemonProcess) -> None:
    url = f"{daemon.url}/api/workspaces/core/signals/echo?nowait=true"
    json_headers = {"Content-Type": "application/json"}
    before = len(httpx.get(f"{daemon.url}/api/sessions", params={"limit": 500}).json()["sessions"])
    for body in (b'{"payload": {"text": "\\ud800"}}', b'{"streamId": "\\uDBFF"}', b'{"parentSessionId": "\\ud800"}',
                 b'{"payload": {"x": NaN}}', b'{"payload": {"x": -Infinity}}', b'{"hook": "\\udc00"}'):
        _json_error(httpx.post(url, content=body, headers=json_headers), 400, "invalid_json")
    after = len(httpx.get(f"{daemon.url}/api/sessions", params={"limit": 500}).json()["sessions"])
    assert after == before
    add = f"{daemon.url}/api/workspaces/add"
    for body in (b'{"path": "/\\u0000"}', b'{"path": "/\\ud800"}'):
        r = httpx.post(add, content=body, headers=json_headers)
        assert r.status_code == 400 and r.json()["error"]["code"] in {"invalid_body", "invalid_json"}


def test_query_edge_cases(daemon: DaemonProcess) -> None:
    base = f"{daemon.url}/api/sessions"
    for params in ({"since": "9999-12-31T23:59:59.9999999Z"}, {"since": "0001-01-01T00:00:00+01:00"},
                   {"until": "9999-12-31T23:59:59.999999Z"}, {"since": "2020-01-01"}, {"limit": "1_0"},
                   {"limit": "\uff11"}):
        r = httpx.get(base, params=params)
        _json_error(r, 400, "invalid_query")
        assert r.json()["error"]["details"][0]["path"] in {"since", "until", "limit"}
    assert httpx.get(base, params={"since": "2020-01-01t00:00:00z"}).status_code == 200
    assert httpx.get(f"{daemon.url}/api/sessions/%2A").status_code == 404
