"""The rest of the HTTP surface against a real daemon: idempotency, cancellation, SSE trigger mode, workspace and
lineage endpoints (spec §4.5, §5.4, §8.3, §9; §13 items 21, 31–33, 38–39)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.test_api_core import assert_error, post, sessions, wait_terminal


def test_idempotency_replay_and_mismatch(daemon: DaemonProcess) -> None:
    key = str(uuid.uuid4())
    first = post(daemon, "core", "echo", {"payload": {"n": 1}}, headers={"Idempotency-Key": key})
    again = post(daemon, "core", "echo", {"payload": {"n": 1}}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(sessions(daemon, correlationId=first.json()["correlationId"])["sessions"]) == 1
    err = assert_error(post(daemon, "core", "echo", {"payload": {"n": 2}}, headers={"Idempotency-Key": key}),
                       422, "idempotency_key_mismatch")
    assert "different" in err["message"]


def test_rejected_request_does_not_burn_the_key(daemon: DaemonProcess) -> None:
    key = str(uuid.uuid4())
    assert_error(post(daemon, "core", "echo", {"payload": {"n": "x"}}, headers={"Idempotency-Key": key}), 400,
                 "payload_invalid")
    ok = post(daemon, "core", "echo", {"payload": {"n": 3}}, headers={"Idempotency-Key": key})
    assert ok.status_code == 202 and "idempotent-replayed" not in ok.headers
    assert_error(post(daemon, "core", "echo", {}, headers={"Idempotency-Key": "bad\tkey"}), 400,
                 "invalid_idempotency_key")
    assert_error(post(daemon, "core", "echo", {}, headers={"Idempotency-Key": "x" * 256}), 400,
                 "invalid_idempotency_key")


async def test_100_concurrent_requests_with_one_key_make_one_session(daemon: DaemonProcess) -> None:
    key = str(uuid.uuid4())
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=daemon.url, limits=limits, timeout=60) as client:
        answers = await asyncio.gather(*(
            client.post("/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": 9}},
                        headers={"Idempotency-Key": key})
            for _ in range(100)
        ))
    assert all(a.status_code == 202 for a in answers), {a.status_code for a in answers}
    ids = {(a.json()["correlationId"], a.json()["sessionId"]) for a in answers}
    assert len(ids) == 1
    assert sum(1 for a in answers if "idempotent-replayed" not in a.headers) == 1
    cid, sid = ids.pop()
    assert [s["sessionId"] for s in sessions(daemon, correlationId=cid)["sessions"]] == [sid]


def test_sync_replay_waits_for_the_same_session(daemon: DaemonProcess) -> None:
    key = str(uuid.uuid4())
    first = post(daemon, "core", "echo", {"payload": {"n": 4}}, query="", headers={"Idempotency-Key": key})
    again = post(daemon, "core", "echo", {"payload": {"n": 4}}, query="", headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.json()["sessionId"] == first.json()["sessionId"]
    assert again.headers["idempotent-replayed"] == "true"


def test_cancel_active_session_and_descendants(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "slow", {"payload": {"duration": "60s"}}).json()
    wait_for(lambda: httpx.get(f"{daemon.url}/api/sessions/{body['sessionId']}").json()["status"] == "active",
             what="slow session to start")
    r = httpx.delete(f"{daemon.url}/api/sessions/{body['sessionId']}", timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "cancelled" and out["sessionId"] == body["sessionId"] and out["cancelled"] == []
    view = wait_terminal(daemon, body["sessionId"])
    assert view["errorCode"] == "cancelled_by_user"
    assert view["agentBlocks"][0]["status"] == "failed"
    assert_error(httpx.delete(f"{daemon.url}/api/sessions/{body['sessionId']}"), 409, "session_not_active")
    assert_error(httpx.delete(f"{daemon.url}/api/sessions/{uuid.uuid4()}"), 404, "session_not_found")


def test_children_endpoint_and_lineage_filters(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "fan", {"payload": {"n": 1}}).json()
    wait_terminal(daemon, body["sessionId"])
    children = httpx.get(f"{daemon.url}/api/sessions/{body['sessionId']}/children").json()["sessions"]
    assert len(children) == 1 and children[0]["parentSessionId"] == body["sessionId"]
    by_parent = sessions(daemon, parentSessionId=body["sessionId"])["sessions"]
    assert [s["sessionId"] for s in by_parent] == [children[0]["sessionId"]]
    by_root = sessions(daemon, rootSessionId=body["sessionId"])["sessions"]
    assert {s["sessionId"] for s in by_root} == {body["sessionId"], children[0]["sessionId"]}
    assert sessions(daemon, signalId="fan", correlationId=body["correlationId"])["sessions"][0]["sessionId"] == \
        body["sessionId"]
    assert_error(httpx.get(f"{daemon.url}/api/sessions/{uuid.uuid4()}/children"), 404, "session_not_found")


def test_sse_trigger_mode(daemon: DaemonProcess) -> None:
    frames: list[Any] = []
    with httpx.stream("POST", f"{daemon.url}/api/workspaces/core/signals/echo", json={"payload": {"n": 5}},
                      headers={"Accept": "text/event-stream"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                frames.append(data if data == "[DONE]" else json.loads(data))
    assert frames[0]["type"] == "data-session-accepted"
    sid = frames[0]["data"]["sessionId"]
    assert frames[-1] == "[DONE]"
    assert frames[-2]["type"] == "job-complete" and frames[-2]["data"]["sessionId"] == sid
    assert frames[-2]["data"]["output"] == {"atlas/echo": {"n": 5}}
    kinds = [f["type"] for f in frames[:-1]]
    assert "data-session-start" in kinds and "data-session-finish" in kinds
    seqs = [f["data"]["seq"] for f in frames[:-1] if f["type"] == "data-session-event"]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 5
    assert {f["data"].get("sessionId") for f in frames[:-1]} == {sid}


def test_workspace_endpoints(daemon: DaemonProcess) -> None:
    shown = httpx.get(f"{daemon.url}/api/workspaces/core").json()
    assert shown["id"] == "core" and "echo" in shown["config"]["jobs"]
    assert_error(httpx.get(f"{daemon.url}/api/workspaces/nope"), 404, "workspace_not_found")
    jobs = httpx.get(f"{daemon.url}/api/workspaces/core/jobs").json()
    fan = next(j for j in jobs if j["id"] == "fan")
    assert fan["name"] == "Fan out into the other workspace" and fan["triggers"] == ["fan"]
    assert fan["plannedSteps"][0]["actionType"] == "signal"
    signals = httpx.get(f"{daemon.url}/api/workspaces/core/signals").json()["signals"]
    echo = next(s for s in signals if s["name"] == "echo")
    assert echo["jobs"] == ["echo"] and echo["signal"]["concurrency"] == "concurrent"
    assert echo["signal"]["schema"]["properties"]["n"]["type"] == "integer"
    status = httpx.get(f"{daemon.url}/api/daemon/status").json()
    assert status["status"] == "running" and status["nats"]["mode"] == "embedded"
    assert "@" not in status["nats"]["url"]


def test_add_and_remove_workspace(daemon: DaemonProcess, tmp_path: Any) -> None:
    assert_error(httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": "relative"}), 400, "invalid_body")
    assert_error(httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(tmp_path / "none")}), 400,
                 "path_not_found")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "workspace.yml").write_text('version: "1.0"\nworkspace: {name: Bad}\nbogus: 1\n')
    err = assert_error(httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(bad)}), 422,
                       "workspace_invalid")
    assert err["details"][0]["path"] == "bogus" and err["details"][0]["line"] == 3
    good = tmp_path / "good"
    good.mkdir()
    (good / "workspace.yml").write_text((FIXTURES / "other" / "workspace.yml").read_text().replace(
        "id: other, name: Other", "id: added, name: Added"))
    r = httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(good)})
    assert r.status_code == 201 and r.json()["created"] is True and r.json()["id"] == "added"
    assert httpx.post(f"{daemon.url}/api/workspaces/add", json={"path": str(good)}).status_code == 200
    r = httpx.delete(f"{daemon.url}/api/workspaces/added")
    assert r.status_code == 200 and r.json()["id"] == "added"
    assert_error(httpx.get(f"{daemon.url}/api/workspaces/added"), 404, "workspace_not_found")


def test_sync_client_disconnect_cancels(daemon: DaemonProcess) -> None:
    url = f"{daemon.url}/api/workspaces/core/signals/slow"
    with httpx.Client(timeout=httpx.Timeout(30, read=0.5)) as client:
        try:
            client.post(url, json={"payload": {"duration": "60s"}})
        except httpx.ReadTimeout:
            pass

    def cancelled() -> dict[str, Any] | None:
        found = sessions(daemon, jobName="slow", status="cancelled", limit=500)["sessions"]
        hits = [s for s in found if s.get("errorCode") == "client_disconnected"]
        return hits[0] if hits else None

    assert wait_for(cancelled, 20, what="the disconnected sync session to be cancelled")


def test_session_list_etag(daemon: DaemonProcess) -> None:
    first = httpx.get(f"{daemon.url}/api/sessions", params={"workspaceId": "other", "limit": 5})
    etag = first.headers["etag"]
    again = httpx.get(f"{daemon.url}/api/sessions", params={"workspaceId": "other", "limit": 5},
                      headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    post(daemon, "core", "fan", {"payload": {"n": 2}})  # adds a session in `other`
    changed = wait_for(lambda: (r := httpx.get(f"{daemon.url}/api/sessions",
                                               params={"workspaceId": "other", "limit": 5},
                                               headers={"If-None-Match": etag})).status_code == 200 and r,
                       what="the list to change")
    assert changed.headers["etag"] != etag


def view_of(d: DaemonProcess, sid: str) -> dict[str, Any]:
    return httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()


def test_replace_policy_cancels_the_older_session(daemon: DaemonProcess) -> None:
    older = post(daemon, "core", "hold-replace", {"payload": {"duration": "60s"}}).json()
    wait_for(lambda: view_of(daemon, older["sessionId"])["status"] == "active", what="older session to start")
    newer = post(daemon, "core", "hold-replace", {"payload": {"duration": "10ms"}}).json()
    old_view = wait_terminal(daemon, older["sessionId"])
    assert old_view["status"] == "cancelled" and old_view["errorCode"] == "replaced"
    assert wait_terminal(daemon, newer["sessionId"])["status"] == "completed"


def test_skip_duplicate_in_sync_mode_is_409(daemon: DaemonProcess) -> None:
    holder = post(daemon, "core", "hold-skip", {"payload": {"duration": "3s"}}).json()
    wait_for(lambda: view_of(daemon, holder["sessionId"])["status"] == "active", what="holder to start")
    err = assert_error(post(daemon, "core", "hold-skip", {"payload": {"duration": "1ms"}}, query=""), 409,
                       "skipped-duplicate")
    assert err["details"]["status"] == "skipped" and holder["sessionId"] in err["details"]["error"]
    wait_terminal(daemon, holder["sessionId"])


def test_signal_without_job_is_404(daemon: DaemonProcess) -> None:
    assert_error(post(daemon, "core", "orphan", {}), 404, "no_job_for_signal")


def test_cancel_cascades_to_running_child(daemon: DaemonProcess) -> None:
    parent = post(daemon, "core", "fan-slow", {}).json()

    def child() -> dict[str, Any] | None:
        kids = httpx.get(f"{daemon.url}/api/sessions/{parent['sessionId']}/children").json()["sessions"]
        return kids[0] if kids and kids[0]["status"] == "active" else None

    kid = wait_for(child, what="the child to run")
    r = httpx.delete(f"{daemon.url}/api/sessions/{parent['sessionId']}", timeout=10)
    assert r.status_code == 200 and r.json()["cancelled"] == [kid["sessionId"]]
    assert r.json()["status"] == "cancelled"
    kid_view = wait_terminal(daemon, kid["sessionId"])
    assert kid_view["status"] == "cancelled" and kid_view["errorCode"] == "parent_cancelled"


def test_cancel_queued_session_never_starts(daemon: DaemonProcess) -> None:
    holder = post(daemon, "core", "hold-queue", {"payload": {"duration": "60s"}}).json()
    wait_for(lambda: view_of(daemon, holder["sessionId"])["status"] == "active", what="holder to start")
    waiting = post(daemon, "core", "hold-queue", {"payload": {"duration": "1ms"}}).json()
    assert view_of(daemon, waiting["sessionId"])["status"] == "queued"
    # Parked behind the holder (its `session:waiting`, issue #16), then cancelled: it never starts.
    wait_for(lambda: view_of(daemon, waiting["sessionId"]).get("waitingFor", {}).get("reason") == "concurrency",
             what="the second session to be parked")
    r = httpx.delete(f"{daemon.url}/api/sessions/{waiting['sessionId']}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = []
    with httpx.stream("GET", f"{daemon.url}/api/sessions/{waiting['sessionId']}/stream", timeout=10) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and '"type"' in line:
                events.append(json.loads(line[6:])["type"])
    assert events == ["session:queued", "session:waiting", "session:complete"]
    httpx.delete(f"{daemon.url}/api/sessions/{holder['sessionId']}", timeout=10)
    wait_terminal(daemon, holder["sessionId"])
