"""Re-run and where a run came from (issue #16, item 4 and the trigger-source part of item 5), end to end against a
real daemon: `POST /api/sessions/{id}/rerun` with and without a payload, `rerunOf` and `trigger: rerun` on the new
run's view and in the listing, its JSON refusals (404, 409, 400, a workspace or signal gone since), the trigger
source recorded from `X-Atlas-Client`, and `atlas sessions rerun` run as a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_proc import DaemonProcess
from tests.test_api_core import UUID4, assert_error, post, sessions, wait_terminal
from tests.test_cli import atlas, clean_env, ids_from

SCRATCH = """\
version: "1.0"
workspace: { id: rerun-scratch, name: Re-run scratch }
signals:
  child:
    provider: system
    concurrency: concurrent
  keep:
    provider: system
    concurrency: concurrent
jobs:
  child:
    triggers: [ { signal: child } ]
    execution: { strategy: sequential, agents: [ atlas/echo ] }
  keep:
    triggers: [ { signal: keep } ]
    execution: { strategy: sequential, agents: [ atlas/echo ] }
"""


def rerun(d: DaemonProcess, sid: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    url = f"{d.url}/api/sessions/{sid}/rerun"
    if content is not None:
        return httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=30)
    if body is None:
        return httpx.post(url, timeout=30)
    return httpx.post(url, json=body, timeout=30)


def finished(d: DaemonProcess, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = post(d, "core", sig, {"payload": payload})
    assert r.status_code == 202, r.text
    return wait_terminal(d, r.json()["sessionId"])


def accepted(r: httpx.Response) -> dict[str, Any]:
    """A re-run's 202: exactly a nowait trigger's answer, with its Location."""
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"message", "status", "workspaceId", "signalId", "correlationId", "sessionId"}
    assert body["status"] == "accepted" and body["message"] == "Signal accepted"
    assert UUID4.match(body["sessionId"]) and UUID4.match(body["correlationId"])
    assert r.headers["location"] == f"/api/sessions/{body['sessionId']}"
    return body


# ---------------------------------------------------------------------------------------------- re-run


def test_rerun_without_a_body_repeats_the_original_input(daemon: DaemonProcess) -> None:
    old = finished(daemon, "echo", {"n": 5, "text": "again"})
    assert old["status"] == "completed" and "rerunOf" not in old
    body = accepted(rerun(daemon, old["sessionId"]))
    assert body["workspaceId"] == "core" and body["signalId"] == "echo"
    assert body["sessionId"] != old["sessionId"] and body["correlationId"] != old["correlationId"]
    # Read-your-writes, as for any trigger: listed at once, with rerunOf on the summary.
    listed = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert [(s["sessionId"], s["rerunOf"], s["trigger"]) for s in listed] == [
        (body["sessionId"], old["sessionId"], "rerun")]
    new = wait_terminal(daemon, body["sessionId"])
    assert new["status"] == "completed"
    assert new["rerunOf"] == old["sessionId"] and new["trigger"] == "rerun"
    assert new["payload"] == {"n": 5, "text": "again"} and new["results"] == old["results"]
    assert new["rootSessionId"] == new["sessionId"] and new["depth"] == 0
    # The finished run's summary keeps it too (the row written at the end).
    listed = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert listed[0]["status"] == "completed" and listed[0]["rerunOf"] == old["sessionId"]
    # `{}` and a null payload mean the original input too.
    for empty in ({}, {"payload": None}):
        again = wait_terminal(daemon, accepted(rerun(daemon, old["sessionId"], empty))["sessionId"])
        assert again["payload"] == {"n": 5, "text": "again"} and again["rerunOf"] == old["sessionId"]


def test_rerun_with_a_payload_and_of_a_failed_run(daemon: DaemonProcess) -> None:
    old = finished(daemon, "echo", {"n": 1})
    new = wait_terminal(daemon, accepted(rerun(daemon, old["sessionId"], {"payload": {"n": 9}}))["sessionId"])
    assert new["payload"] == {"n": 9} and new["results"] == {"atlas/echo": {"n": 9}}
    assert new["rerunOf"] == old["sessionId"]
    # A failed run can be re-run (and a re-run re-run: it links to its own predecessor).
    failed = finished(daemon, "fail", {"attempt": 1})
    assert failed["status"] == "failed"
    second = wait_terminal(daemon, accepted(rerun(daemon, failed["sessionId"]))["sessionId"])
    assert second["status"] == "failed" and second["payload"] == {"attempt": 1}
    assert second["rerunOf"] == failed["sessionId"] and second["jobName"] == "fail"
    third = wait_terminal(daemon, accepted(rerun(daemon, second["sessionId"]))["sessionId"])
    assert third["rerunOf"] == second["sessionId"]


def test_rerun_refusals_are_json_and_create_nothing(daemon: DaemonProcess) -> None:
    before = len(sessions(daemon, limit=500)["sessions"])
    assert_error(rerun(daemon, "00000000-0000-4000-8000-000000000000"), 404, "session_not_found")
    assert_error(rerun(daemon, "no*such"), 404, "session_not_found")
    running = post(daemon, "core", "slow", {"payload": {"duration": "60s"}}).json()["sessionId"]
    try:
        err = assert_error(rerun(daemon, running), 409, "session_not_finished")
        assert err["details"]["status"] in {"queued", "active"}
    finally:
        httpx.delete(f"{daemon.url}/api/sessions/{running}", timeout=30)
    old = finished(daemon, "echo", {"n": 2})
    err = assert_error(rerun(daemon, old["sessionId"], {"payload": {"n": "two"}}), 400, "payload_invalid")
    assert err["details"][0]["path"] == "n"
    err = assert_error(rerun(daemon, old["sessionId"], {"payload": 3, "parentSessionId": "x"}), 400, "invalid_body")
    assert {d["path"] for d in err["details"]} == {"payload", "parentSessionId"}
    assert_error(rerun(daemon, old["sessionId"], [1]), 400, "invalid_body")
    assert_error(rerun(daemon, old["sessionId"], content=b"{nope"), 400, "invalid_json")
    # Only the slow run and the echo run above were created.
    assert len(sessions(daemon, limit=500)["sessions"]) == before + 2


def test_rerun_after_the_signal_or_the_workspace_is_gone(daemon: DaemonProcess, tmp_path: Path) -> None:
    (tmp_path / "workspace.yml").write_text(SCRATCH)
    add = httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(tmp_path)}, timeout=30)
    assert add.status_code == 201, add.text
    child = post(daemon, "rerun-scratch", "child", {"payload": {"k": 1}}).json()["sessionId"]
    keep = post(daemon, "rerun-scratch", "keep", {"payload": {"k": 2}}).json()["sessionId"]
    wait_terminal(daemon, child)
    wait_terminal(daemon, keep)
    # The `child` signal and job are removed, the workspace reloaded: its run cannot be repeated.
    (tmp_path / "workspace.yml").write_text(SCRATCH.split("jobs:")[0].replace(
        "  child:\n    provider: system\n    concurrency: concurrent\n", "")
        + "jobs:\n  keep:\n    triggers: [ { signal: keep } ]\n"
          "    execution: { strategy: sequential, agents: [ atlas/echo ] }\n")
    reload = httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(tmp_path)}, timeout=30)
    assert reload.status_code == 200, reload.text
    err = assert_error(rerun(daemon, child), 404, "signal_not_found")
    assert err["message"].startswith(f"Cannot re-run session '{child}': ") and "'child'" in err["message"]
    assert wait_terminal(daemon, accepted(rerun(daemon, keep))["sessionId"])["status"] == "completed"
    assert httpx.delete(f"{daemon.url}/api/workspaces/rerun-scratch", timeout=30).status_code == 200
    err = assert_error(rerun(daemon, keep), 404, "workspace_not_found")
    assert "Cannot re-run" in err["message"] and "rerun-scratch" in err["message"]


# ---------------------------------------------------------------------------------------------- trigger source


@pytest.mark.parametrize(("header", "trigger"), [
    (None, "http"), ("ui", "ui"), ("cli", "cli"), ("UI", "ui"), ("schedule", "http"), ("rerun", "http"),
    ("curl", "http"),
])
def test_the_trigger_records_ui_and_cli_from_the_client_header(daemon: DaemonProcess, header: str | None,
                                                               trigger: str) -> None:
    headers = {"X-Atlas-Client": header} if header is not None else None
    r = post(daemon, "core", "echo", {"payload": {"n": 1}}, headers=headers)
    assert r.status_code == 202, r.text
    body = r.json()
    listed = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert listed[0]["trigger"] == trigger
    assert wait_terminal(daemon, body["sessionId"])["trigger"] == trigger


def test_a_webhook_stays_a_webhook_whoever_sends_it(daemon: DaemonProcess) -> None:
    r = post(daemon, "core", "echo", {"hello": 1}, headers={"X-Atlas-Client": "ui"})
    assert r.status_code == 202 and r.json()["message"] == "Webhook accepted", r.text
    assert wait_terminal(daemon, r.json()["sessionId"])["trigger"] == "webhook"


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("rerun-cli-home"))


def test_cli_triggers_are_labelled_cli_and_sessions_rerun(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", '{"n": 4}', "--nowait")
    assert r.returncode == 0, r.stderr
    _, sid = ids_from(r.stdout)
    old = wait_terminal(daemon, sid)
    assert old["trigger"] == "cli"

    # By a unique 8-character prefix: the ids first, like `signal trigger`.
    r = atlas(daemon, env, "sessions", "rerun", sid[:8])
    assert r.returncode == 0, r.stderr
    cid, new_sid = ids_from(r.stdout)
    assert new_sid != sid and f"Re-run of {sid}" in r.stderr  # notes go to stderr
    assert r.stdout.splitlines()[2] == f"url            {daemon.url}/sessions/{new_sid}"  # its UI page, after the ids
    new = wait_terminal(daemon, new_sid)
    assert (new["correlationId"], new["rerunOf"], new["trigger"], new["payload"]) == (cid, sid, "rerun", {"n": 4})

    # --payload replaces the input; --json prints the 202 answer.
    r = atlas(daemon, env, "sessions", "rerun", sid, "--payload", '{"n": 8}', "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert set(body) == {"message", "status", "workspaceId", "signalId", "correlationId", "sessionId"}
    assert wait_terminal(daemon, body["sessionId"])["payload"] == {"n": 8}

    # --wait follows the new run and exits with its status code; `sessions show` names what it re-ran.
    r = atlas(daemon, env, "sessions", "rerun", new_sid, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    _, third = ids_from(r.stdout)
    shown = atlas(daemon, env, "sessions", "show", third)
    assert shown.returncode == 0, shown.stderr
    assert any(line.split() == ["re-run", "of", new_sid] for line in shown.stdout.splitlines()), shown.stdout
    assert "(trigger: rerun)" in shown.stdout

    # Refusals: a bad --payload (exit 2, naming the option) and a run that has not finished (409: exit 1).
    r = atlas(daemon, env, "sessions", "rerun", sid, "--payload", "[1]")
    assert r.returncode == 2 and "--payload must be a JSON object" in r.stderr, r.stderr
    running = post(daemon, "core", "slow", {"payload": {"duration": "60s"}}).json()["sessionId"]
    try:
        r = atlas(daemon, env, "sessions", "rerun", running)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.startswith(f"atlas: session_not_finished: Session '{running}' is still "), r.stderr
    finally:
        httpx.delete(f"{daemon.url}/api/sessions/{running}", timeout=30)
