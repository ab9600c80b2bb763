"""Adding and loading workspaces, attacked (issue #19, bugs 2 and 6, and the two low items about who may add).

Against real daemons: `POST /api/workspaces/add` must not turn API access into file access (only a directory
holding `workspace.yml`, or a file named `workspace.yml`/`.yaml`, may be added, and no error quotes what a file
holds), loading must not block the event loop (a FIFO, an oversized file, a 1 MiB workspace), `ATLAS_WORKSPACE_ROOTS`
limits where workspaces may come from, and `ATLAS_REQUIRE_TOKEN` makes the token mandatory on loopback too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import ASGITransport

from atlas.api.security import SecurityMiddleware
from atlas.config.loader import MAX_FILE_BYTES
from atlas.config.settings import Settings
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess

# What a leaked file would show: none of these may ever appear in a response.
KEY_MATERIAL = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQSECRETKEYMATERIAL"
PRIVATE_KEY = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MATERIAL}\n{KEY_MATERIAL[::-1]}\n" \
              "-----END OPENSSH PRIVATE KEY-----\n"
ENV_TOKEN = "tok-SECRETENVTOKEN-0123456789abcdef0123456789"
ENV_FILE = f"ATLAS_TOKEN={ENV_TOKEN}\nDB_PASSWORD=hunter2-SECRETDBPASSWORD\n"
YAML_SECRETS = ("aws_access_key_id: AKIASECRETACCESSKEYID\n"
                "aws_secret_access_key: SECRETAWSKEY/abcdefghijklmnopqrstuvwxyz0123\n")
SECRETS = ("SECRETKEYMATERIAL", "BEGIN OPENSSH", "SECRETENVTOKEN", "SECRETDBPASSWORD", "hunter2",
           "AKIASECRET", "SECRETAWSKEY")
TOKEN = "t" * 40
HEALTH_TIMEOUT = 2.0  # the liveness bound of the issue: /health answers within 2 s while a workspace loads


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("home"), []).start()
    yield d
    d.stop()


def add(daemon: DaemonProcess, path: Path | str, token: str | None = None, timeout: float = 30.0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(path)}, headers=headers,
                      timeout=timeout)


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code, r.text
    return body


def assert_no_secret(r: httpx.Response) -> None:
    leaked = [s for s in SECRETS if s in r.text]
    assert not leaked, f"response quotes file content {leaked}: {r.text}"


def health_answers(daemon: DaemonProcess) -> bool:
    r = httpx.get(f"{daemon.url}/health", timeout=HEALTH_TIMEOUT)
    return r.status_code == 200 and r.json()["status"] == "ok"


def workspace_dir(parent: Path, name: str, ws_id: str) -> Path:
    """A valid workspace (the `other` fixture under another id) in `parent/name`."""
    d = parent / name
    d.mkdir(parents=True)
    (d / "workspace.yml").write_text((FIXTURES / "other" / "workspace.yml").read_text().replace(
        "id: other, name: Other", f"id: {ws_id}, name: {ws_id.title()}"))
    return d


# ---------------------------------------------------------------------------------------------- bug 2


def test_a_file_that_is_not_a_workspace_file_is_refused_unread(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A key, an env file, a YAML file of secrets: 400 `not_a_workspace`, and nothing of them in the answer."""
    files = {"id_ed25519": PRIVATE_KEY, ".env": ENV_FILE, "secrets.yml": YAML_SECRETS, "creds.yaml": YAML_SECRETS}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        r = add(daemon, tmp_path / name)
        body = error(r, 400, "not_a_workspace")
        assert "workspace.yml" in body["message"]
        assert_no_secret(r)


def test_a_workspace_yml_that_holds_something_else_is_not_quoted(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A `workspace.yml` that is a key or a secrets file (say, a symlink to one) is invalid, and the errors give
    file, line, column and path but never the text: a scalar document by its kind, a mapping by its keys only."""
    cases = {"key": PRIVATE_KEY, "env": ENV_FILE, "yaml": YAML_SECRETS}
    for name, text in cases.items():
        secret = tmp_path / f"{name}.secret"
        secret.write_text(text)
        d = tmp_path / name
        d.mkdir()
        (d / "workspace.yml").symlink_to(secret)
        for target in (d, d / "workspace.yml"):
            r = add(daemon, target)
            body = error(r, 422, "workspace_invalid")
            assert_no_secret(r)
            assert body["details"] and all({"file", "line", "column", "path", "message"} <= e.keys()
                                           for e in body["details"])
    yaml_errors = error(add(daemon, tmp_path / "yaml"), 422, "workspace_invalid")["details"]
    assert {e["path"] for e in yaml_errors} >= {"aws_access_key_id", "aws_secret_access_key", "workspace"}


def test_long_keys_and_values_are_truncated_in_errors(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Even the offending key is quoted only in part, and a value at most in part."""
    long_key, long_value = "k" * 70 + "SECRETKEYMATERIAL", "v" * 40 + "SECRETDBPASSWORD"
    d = tmp_path / "long"
    d.mkdir()
    (d / "workspace.yml").write_text(f'version: "1.0"\nworkspace: {{name: {long_value}, timeout: {long_value}}}\n'
                                     f"{long_key}: {long_value}\n")
    r = add(daemon, d)
    details = error(r, 422, "workspace_invalid")["details"]
    assert_no_secret(r)
    assert any(e["path"].startswith("kkkk") and e["line"] == 3 and e["column"] == 1 for e in details), details


def test_a_genuine_workspace_file_can_still_be_added_by_its_own_path(daemon: DaemonProcess, tmp_path: Path) -> None:
    d = workspace_dir(tmp_path, "byfile", "byfile")
    r = add(daemon, d / "workspace.yml")
    assert r.status_code == 201 and r.json()["id"] == "byfile" and r.json()["path"] == str(d)
    yaml = workspace_dir(tmp_path, "byyaml", "byyaml")
    (yaml / "workspace.yml").rename(yaml / "workspace.yaml")
    r = add(daemon, yaml / "workspace.yaml")
    assert r.status_code == 201 and r.json()["id"] == "byyaml"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "workspace.yml").write_text('version: "1.0"\nworkspace: {name: Bad}\nbogus: 1\n')
    details = error(add(daemon, bad), 422, "workspace_invalid")["details"]
    assert details == [{"file": str(bad / "workspace.yml"), "line": 3, "column": 1, "path": "bogus",
                        "message": "unknown key 'bogus'"}]


# ---------------------------------------------------------------------------------------------- bug 6


@contextlib.contextmanager
def unblock_fifo(fifo: Path) -> Iterator[None]:
    """Whatever the test found, open the FIFO's write end once: a daemon stuck opening it (the bug) gets EOF."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_named_workspace_yml_is_refused_at_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Before the fix the daemon opened the FIFO on its event loop and froze for good (the add timed out)."""
    d = tmp_path / "fifo"
    d.mkdir()
    fifo = d / "workspace.yml"
    os.mkfifo(fifo)
    with unblock_fifo(fifo):
        for target in (d, fifo):
            body = error(add(daemon, target, timeout=10), 422, "workspace_invalid")
            assert body["details"][0]["message"] == "not a regular file"
            assert health_answers(daemon)


def test_a_file_over_the_cap_is_refused_without_reading_it(daemon: DaemonProcess, tmp_path: Path) -> None:
    d = tmp_path / "big"
    d.mkdir()
    with (d / "workspace.yml").open("wb") as f:
        f.truncate(64 * 1024**3)  # sparse: 64 GiB that would take minutes to read
    body = error(add(daemon, d, timeout=10), 422, "workspace_invalid")
    assert body["details"][0]["message"] == f"file is larger than {MAX_FILE_BYTES} bytes (1 MiB)"
    assert health_answers(daemon)


def huge_workspace(limit: int) -> str:
    """A valid workspace just under `limit` bytes: thousands of signals and jobs (parsing it takes many seconds)."""
    head = 'version: "1.0"\nworkspace: { id: huge, name: Huge }\nsignals:\n'
    sig = ("  s{i}:\n    provider: system\n    concurrency: concurrent\n"
           "    schema: {{ type: object, properties: {{ n: {{ type: integer }}, t: {{ type: string }} }} }}\n")
    job = ("  j{i}:\n    triggers: [ {{ signal: s{i} }} ]\n"
           "    execution: {{ strategy: sequential, agents: [ atlas/echo ] }}\n")
    signals, jobs, size, i = [], [], len(head) + len("jobs:\n"), 0
    while size + len(sig.format(i=i)) + len(job.format(i=i)) <= limit:
        signals.append(sig.format(i=i))
        jobs.append(job.format(i=i))
        size += len(signals[-1]) + len(jobs[-1])
        i += 1
    return head + "".join(signals) + "jobs:\n" + "".join(jobs)


def test_a_huge_workspace_loads_off_the_event_loop(daemon: DaemonProcess, tmp_path: Path) -> None:
    """While a 1 MiB workspace loads (many seconds of parsing), /health keeps answering within 2 s."""
    d = tmp_path / "huge"
    d.mkdir()
    (d / "workspace.yml").write_text(huge_workspace(MAX_FILE_BYTES))
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            result["response"] = add(daemon, d, timeout=300)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    loader = threading.Thread(target=load)
    loader.start()
    answered_while_loading = 0
    try:
        while loader.is_alive():
            assert health_answers(daemon)
            answered_while_loading += loader.is_alive()
    finally:
        loader.join()
    r = result.get("response")
    assert r is not None, result.get("error")
    assert r.status_code == 201 and r.json()["id"] == "huge", r.text
    assert answered_while_loading >= 2
    signals = httpx.get(f"{daemon.url}/api/workspaces/huge/signals", timeout=30).json()["signals"]
    assert len(signals) > 1000


# ---------------------------------------------------------------------------------------------- ATLAS_WORKSPACE_ROOTS


def test_workspace_roots_limit_what_may_be_added(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    inside = workspace_dir(allowed, "inside", "inside")
    away = workspace_dir(outside, "away", "away")
    (allowed / "link").symlink_to(away, target_is_directory=True)
    smuggled = allowed / "smuggled"
    smuggled.mkdir()
    (smuggled / "workspace.yml").symlink_to(away / "workspace.yml")
    home = tmp_path / "home"
    # Registered before the roots were set: a daemon started later with the roots must not load it again.
    first = DaemonProcess(home, []).start()
    try:
        assert add(first, away).status_code == 201
    finally:
        first.stop()
    d = DaemonProcess(home, [], env={"ATLAS_WORKSPACE_ROOTS": f"{tmp_path / 'nowhere'}{os.pathsep}{allowed}"})
    d.start()
    try:
        assert httpx.get(f"{d.url}/api/workspaces/away").status_code == 404
        assert add(d, inside).status_code == 201
        for target in (away, allowed / "link", allowed / ".." / "outside" / "away", smuggled):
            body = error(add(d, target), 403, "path_not_allowed")
            assert "ATLAS_WORKSPACE_ROOTS" in body["message"]
        error(add(d, outside / "nothing"), 403, "path_not_allowed")  # no probing for files outside the roots
        error(add(d, allowed / "nothing"), 400, "path_not_found")
        assert [w["id"] for w in httpx.get(f"{d.url}/api/workspaces").json()] == ["inside"]
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------- ATLAS_REQUIRE_TOKEN


def test_require_token_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {"ATLAS_REQUIRE_TOKEN": "1", "ATLAS_TOKEN": ""}
    d = DaemonProcess(tmp_path / "home", [], env=env)
    try:
        with pytest.raises(AssertionError, match="daemon exited with 2"):
            d.start()
        assert "ATLAS_REQUIRE_TOKEN" in d.log()
    finally:
        d.stop()


def test_require_token_guards_loopback_requests_and_the_cli_sends_it(tmp_path: Path) -> None:
    ws = workspace_dir(tmp_path, "guarded", "guarded")
    d = DaemonProcess(tmp_path / "home", [], env={"ATLAS_REQUIRE_TOKEN": "1", "ATLAS_TOKEN": TOKEN}).start()
    try:
        error(httpx.get(f"{d.url}/api/workspaces"), 401, "unauthorized")
        error(add(d, ws), 401, "unauthorized")
        assert httpx.get(f"{d.url}/health").status_code == 200
        cli_env = {**os.environ, "ATLAS_URL": d.url, "ATLAS_TOKEN": ""}
        r = subprocess.run([ATLAS, "workspace", "add", str(ws)], env=cli_env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "unauthorized" in r.stderr
        cli_env["ATLAS_TOKEN"] = TOKEN
        r = subprocess.run([ATLAS, "workspace", "add", str(ws)], env=cli_env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "Added workspace 'guarded'" in r.stdout, r.stderr
        listed = httpx.get(f"{d.url}/api/workspaces", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert [w["id"] for w in listed] == ["guarded"]
    finally:
        d.stop()


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_require_token_without_a_token_fails_closed(tmp_path: Path) -> None:
    """Should a daemon be built without `serve.py`'s start check, no API request gets through at all."""
    settings = Settings(home=tmp_path, require_token=True)
    app = SecurityMiddleware(_ok_app, settings)
    async with httpx.AsyncClient(transport=ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        assert (await client.get("/api/workspaces")).status_code == 401
        assert (await client.get("/api/workspaces", headers={"Authorization": "Bearer "})).status_code == 401
        assert (await client.get("/health")).status_code == 200
