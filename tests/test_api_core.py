"""The core API against a real daemon (real nats-server, HTTP on 127.0.0.1, SQLite): spec §4, §5, §7.2."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from typing import Any

import httpx
import pytest

from tests.daemon_proc import DaemonProcess, wait_for

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
JSON = {"Content-Type": "application/json"}


def post(d: DaemonProcess, ws: str, sig: str, body: Any = None, query: str = "?nowait=true",
         headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
    url = f"{d.url}/api/workspaces/{ws}/signals/{sig}{query}"
    if content is not None:
        return httpx.post(url, content=content, headers=headers or JSON, timeout=30)
    return httpx.post(url, json=body if body is not None else {}, headers=headers, timeout=30)


def sessions(d: DaemonProcess, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{d.url}/api/sessions", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_terminal(d: DaemonProcess, sid: str, timeout: float = 30) -> dict[str, Any]:
    terminal = {"completed", "failed", "skipped", "cancelled", "interrupted"}

    def done() -> dict[str, Any] | None:
        view = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()
        return view if view.get("status") in terminal else None

    return wait_for(done, timeout, what=f"session {sid} to end")


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_health_and_workspaces(daemon: DaemonProcess) -> None:
    health = httpx.get(daemon.url + "/health").json()
    assert health["status"] == "ok" and health["activeWorkspaces"] == 2
    assert health["readModel"] == {"kind": "sqlite", "available": True}
    listing = httpx.get(daemon.url + "/api/workspaces").json()
    assert [w["id"] for w in listing] == ["core", "other"]
    assert listing[0]["jobCount"] == 10 and listing[0]["signalCount"] == 11 and listing[0]["status"] == "ready"


def test_nowait_202_shape_and_read_your_writes(daemon: DaemonProcess) -> None:
    r = post(daemon, "core", "echo", {"payload": {"n": 7}})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"message", "status", "workspaceId", "signalId", "correlationId", "sessionId"}
    assert body["message"] == "Signal accepted" and body["status"] == "accepted"
    assert UUID4.match(body["correlationId"]) and UUID4.match(body["sessionId"])
    assert r.headers["location"] == f"/api/sessions/{body['sessionId']}"
    # Visible at once, with no retry.
    found = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert [s["sessionId"] for s in found] == [body["sessionId"]]
    assert found[0]["status"] in {"queued", "active", "completed"}
    view = wait_terminal(daemon, body["sessionId"])
    assert view["status"] == "completed"
    assert view["correlationId"] == body["correlationId"]
    assert view["results"] == {"atlas/echo": {"n": 7}}


def test_unknown_correlation_is_empty(daemon: DaemonProcess) -> None:
    assert sessions(daemon, correlationId=str(uuid.uuid4())) == {"sessions": []}


def test_event_log_and_correlation_identical_everywhere(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "echo", {"payload": {"n": 1}}).json()
    view = wait_terminal(daemon, body["sessionId"])
    summary = sessions(daemon, correlationId=body["correlationId"])["sessions"][0]
    assert view["correlationId"] == summary["correlationId"] == body["correlationId"]
    assert view["lastSeq"] == 5  # queued, start, step:start, step:complete, complete
    assert summary["stepCount"] == 1 and summary["agentNames"] == ["atlas/echo"]
    assert summary["rootSessionId"] == body["sessionId"] and summary["depth"] == 0
    assert "parentSessionId" not in summary


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE"])
def test_nowait_truthy_values(daemon: DaemonProcess, value: str) -> None:
    assert post(daemon, "core", "echo", {}, query=f"?nowait={value}").status_code == 202


def test_sync_mode_returns_output(daemon: DaemonProcess) -> None:
    r = post(daemon, "core", "echo", {"payload": {"n": 2}}, query="")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["message"] == "Signal completed"
    assert body["output"] == {"atlas/echo": {"n": 2}}
    assert UUID4.match(body["correlationId"]) and body["artifactIds"] == [] and body["summary"] == ""


def test_sync_mode_failed_session_is_422(daemon: DaemonProcess) -> None:
    err = assert_error(post(daemon, "core", "fail", {}, query="?nowait=false"), 422, "session_failed")
    assert err["details"]["errorCode"] == "exit_status"
    view = wait_terminal(daemon, err["details"]["sessionId"])
    block = view["agentBlocks"][0]
    assert block["status"] == "failed" and block["output"]["exitCode"] == 3
    assert block["output"]["stdout"].strip() == "boom"


def test_no_matching_transition_is_skipped(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "nomatch", {}).json()
    view = wait_terminal(daemon, body["sessionId"])
    assert view["status"] == "skipped" and view["errorCode"] == "no_transition"
    assert view["error"] == 'Signal "nomatch" had no matching transition in state "idle"'


@pytest.mark.parametrize("query", ["?nowait=true", "", "?nowait=false"])
def test_errors_before_acceptance(daemon: DaemonProcess, query: str) -> None:
    before = len(sessions(daemon, limit=500)["sessions"])
    assert_error(post(daemon, "nope", "echo", {}, query=query), 404, "workspace_not_found")
    assert_error(post(daemon, "core", "nope", {}, query=query), 404, "signal_not_found")
    err = assert_error(post(daemon, "core", "echo", {"payload": {"n": "three"}}, query=query), 400,
                       "payload_invalid")
    assert err["details"] == [{"path": "n", "message": "'three' is not of type 'integer'"}]
    assert_error(post(daemon, "core", "echo", content=b'{"payload": ', query=query), 400, "invalid_json")
    assert_error(post(daemon, "core", "echo", content=b"[1, 2]", query=query), 400, "invalid_body")
    assert_error(post(daemon, "core", "echo", {"payload": [1]}, query=query), 400, "invalid_body")
    assert len(sessions(daemon, limit=500)["sessions"]) == before


def test_invalid_nowait_and_query_errors(daemon: DaemonProcess) -> None:
    assert_error(post(daemon, "core", "echo", {}, query="?nowait=maybe"), 400, "invalid_query")
    r = httpx.get(f"{daemon.url}/api/sessions", params={"limit": 0})
    assert_error(r, 400, "invalid_query")
    assert_error(httpx.get(f"{daemon.url}/api/sessions", params={"status": "weird"}), 400, "invalid_query")
    assert_error(httpx.get(f"{daemon.url}/api/sessions", params={"cursor": "!!"}), 400, "invalid_query")
    assert_error(httpx.get(f"{daemon.url}/api/sessions/{uuid.uuid4()}"), 404, "session_not_found")
    assert_error(httpx.get(f"{daemon.url}/api/nothing"), 404, "not_found")
    assert_error(httpx.delete(f"{daemon.url}/api/workspaces"), 405, "method_not_allowed")


def test_body_too_large(daemon: DaemonProcess) -> None:
    big = b'{"payload": {"text": "' + b"x" * (1024 * 1024 + 10) + b'"}}'
    assert_error(post(daemon, "core", "echo", content=big), 413, "body_too_large")


def test_webhook_body(daemon: DaemonProcess) -> None:
    r = post(daemon, "core", "echo", {"n": 5, "extra": "yes"})
    assert r.status_code == 202 and r.json()["message"] == "Webhook accepted"
    view = wait_terminal(daemon, r.json()["sessionId"])
    assert view["trigger"] == "webhook" and view["payload"] == {"n": 5, "extra": "yes"}


def test_list_filters_and_paging(daemon: DaemonProcess) -> None:
    ids = [post(daemon, "core", "echo", {"payload": {"n": i}}).json()["sessionId"] for i in range(7)]
    for sid in ids:
        wait_terminal(daemon, sid)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"workspaceId": "core", "jobName": "echo", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = sessions(daemon, **params)
        seen += [s["sessionId"] for s in page["sessions"]]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert sessions(daemon, workspaceId="core", jobName="nope") == {"sessions": []}
    done = sessions(daemon, status="completed,failed", workspaceId="core", limit=500)["sessions"]
    assert done and all(s["status"] in {"completed", "failed"} for s in done)
    keys = [(s["startedAt"], s["sessionId"]) for s in done]
    assert keys == sorted(keys, reverse=True)


async def test_200_concurrent_nowait_triggers_each_find_their_own(daemon: DaemonProcess) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=daemon.url, limits=limits, timeout=60) as client:

        async def fire(i: int) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
            r = await client.post("/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": i}})
            assert r.status_code == 202, r.text
            body = r.json()
            lookup = await client.get("/api/sessions", params={"correlationId": body["correlationId"]})
            return i, body, lookup.json()["sessions"]

        answers = await asyncio.gather(*(fire(i) for i in range(200)))
        assert len({a[1]["correlationId"] for a in answers}) == 200
        assert len({a[1]["sessionId"] for a in answers}) == 200
        for _, body, found in answers:
            assert [s["sessionId"] for s in found] == [body["sessionId"]]
            assert found[0]["correlationId"] == body["correlationId"]

        async def final(body: dict[str, Any]) -> dict[str, Any]:
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                found = (await client.get("/api/sessions", params={"correlationId": body["correlationId"]})).json()
                if found["sessions"][0]["status"] == "completed":
                    return found
                assert asyncio.get_running_loop().time() < deadline, "session did not complete"
                await asyncio.sleep(0.05)

        finals = await asyncio.gather(*(final(a[1]) for a in answers))
        for (i, body, _), found in zip(answers, finals, strict=True):
            assert [s["sessionId"] for s in found["sessions"]] == [body["sessionId"]]
            view = (await client.get(f"/api/sessions/{body['sessionId']}")).json()
            assert view["results"] == {"atlas/echo": {"n": i}}


async def test_skip_policy_two_at_once(daemon: DaemonProcess) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
        url = "/api/workspaces/core/signals/hold-skip?nowait=true"
        first, second = await asyncio.gather(
            client.post(url, json={"payload": {"duration": "1s"}}),
            client.post(url, json={"payload": {"duration": "1s"}}),
        )
    bodies = [first.json(), second.json()]
    views = [wait_terminal(daemon, b["sessionId"]) for b in bodies]
    statuses = sorted(v["status"] for v in views)
    assert statuses == ["completed", "skipped"], views
    skipped = next(v for v in views if v["status"] == "skipped")
    assert skipped["errorCode"] == "skipped-duplicate"
    body = next(b for b in bodies if b["sessionId"] == skipped["sessionId"])
    found = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert [(s["sessionId"], s["status"]) for s in found] == [(skipped["sessionId"], "skipped")]


def test_queue_policy_runs_in_order(daemon: DaemonProcess) -> None:
    ids = [post(daemon, "core", "hold-queue", {"payload": {"duration": "300ms"}}).json()["sessionId"]
           for _ in range(3)]
    views = [wait_terminal(daemon, sid) for sid in ids]
    assert [v["status"] for v in views] == ["completed"] * 3
    for earlier, later in itertools.pairwise(views):
        assert earlier["completedAt"] <= later["startedAt"]


def test_cascade_into_other_workspace(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "fan", {"payload": {"n": 4}}).json()
    parent = wait_terminal(daemon, body["sessionId"])
    assert parent["status"] == "completed", parent
    tree = sessions(daemon, correlationId=body["correlationId"])["sessions"]
    assert len(tree) == 2
    child = next(s for s in tree if s["sessionId"] != body["sessionId"])
    assert child["parentSessionId"] == body["sessionId"]
    assert child["rootSessionId"] == body["sessionId"]
    assert child["depth"] == 1 and child["trigger"] == "cascade"
    assert child["workspaceId"] == "other" and child["correlationId"] == body["correlationId"]
    child_view = wait_terminal(daemon, child["sessionId"])
    assert child_view["payload"] == {"n": 4}  # "{{ payload.n }}" arrived as an integer
    assert parent["results"]["child"]["status"] == "completed"
    assert parent["agentBlocks"][0]["childSessionId"] == child["sessionId"]


def test_self_cascade_stops_at_depth_limit(daemon: DaemonProcess) -> None:
    body = post(daemon, "core", "loop", {}).json()

    def deepest() -> dict[str, Any] | None:
        tree = sessions(daemon, correlationId=body["correlationId"], limit=50)["sessions"]
        over = [s for s in tree if s.get("errorCode") == "cascade_depth_exceeded"]
        return over[0] if over and len(tree) == 10 else None

    over = wait_for(deepest, 30, what="the cascade to hit the depth limit")
    assert over["status"] == "failed" and over["depth"] == 9
    tree = sessions(daemon, correlationId=body["correlationId"], limit=50)["sessions"]
    by_depth = {s["depth"]: s for s in tree}
    assert sorted(by_depth) == list(range(10))
    for depth in range(1, 10):
        assert by_depth[depth]["parentSessionId"] == by_depth[depth - 1]["sessionId"]
        assert by_depth[depth]["rootSessionId"] == body["sessionId"]
    parent_of_over = wait_terminal(daemon, by_depth[8]["sessionId"])
    assert parent_of_over["status"] == "failed"
    assert parent_of_over["errorCode"] == "cascade_depth_exceeded"
