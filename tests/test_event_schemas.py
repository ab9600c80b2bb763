"""Every durable event a real daemon writes validates against its own component of the `/openapi.json` it serves.

The published event schemas are generated from the TypedDicts the runtime builds its events by (issue #13, item 1),
so this holds the whole chain to account: producers → constructors → the bus → the SSE replay → the document.
Representative runs, on real daemons (real nats-server, HTTP, SQLite): completed (with `step:skipped` and
`session:summary`), failed, skipped (no transition, and a duplicate under policy `skip`), cancelled, a cascade (a
parent and its child in another workspace), a cancelled tree (the child ends `parent_cancelled`), and a session
interrupted by a crash (kill -9 while it runs, then a restart), each read back through its own SSE stream
`/api/sessions/{id}/stream`.

The crash case is the drift the issue found: recovery wrote `session:complete` without `durationMs`, which the
published schema requires; the same test against the code before the fix fails on that event.

Two fast checks without a daemon come first: each constructor writes exactly its TypedDict's fields in their
declared order (the wire's bytes), and what it builds validates against the generated component.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.api.wire_schemas import component_schemas
from atlas.cli.sse import parse_sse
from atlas.sessions import events as ev
from atlas.sessions.events import EVENT_TYPES, duration_ms
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.test_openapi import Document
from tests.test_streams import post as trigger
from tests.test_streams import view

WORKSPACES = [FIXTURES / "core", FIXTURES / "other", FIXTURES / "quick"]
ENV = {"ATLAS_ACK_WAIT": "2s", "ATLAS_SHUTDOWN_GRACE": "1s"}
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


def ended(d: DaemonProcess, sid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (v := view(d, sid))["status"] in TERMINAL and v, timeout, what=f"{sid} to end")


def started(d: DaemonProcess, sid: str) -> None:
    wait_for(lambda: view(d, sid)["status"] == "active", 30, what=f"{sid} to start")


def cancel(d: DaemonProcess, sid: str) -> None:
    r = httpx.delete(f"{d.url}/api/sessions/{sid}", timeout=30)
    assert r.status_code in (200, 202), r.text


def durable_events(d: DaemonProcess, sid: str) -> list[dict[str, Any]]:
    """The session's durable events as its SSE stream replays them (a finished session's stream closes itself)."""
    with httpx.stream("GET", f"{d.url}/api/sessions/{sid}/stream", timeout=30) as r:
        assert r.status_code == 200, r.read()
        frames = list(parse_sse(r.iter_lines()))
    assert frames and frames[-1].event == "end", frames[-1:]
    events = [json.loads(f.data) for f in frames if f.event == "message"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "session:complete"
    return events


def document(d: DaemonProcess) -> Document:
    r = httpx.get(f"{d.url}/openapi.json", timeout=10)
    assert r.status_code == 200, r.text
    return Document(r.json())


def check_log(doc: Document, events: list[dict[str, Any]]) -> None:
    """Each event against the component of its type, and against the `Event` union every stream declares."""
    for event in events:
        doc.check_component(EVENT_TYPES[event["type"]].__name__, event)
        doc.check_component("Event", event)


# ---------------------------------------------------------------- the model itself (no daemon)

SID = "7f0c2a51-8d7e-4f43-9a51-0b8f6c1de2aa"
PLAN = [ev.planned_step(agentName="a", stateId="s0", task="t", actionType="agent", outputKey="a")]


#: A two-level cause chain with every field (issue #16).
CAUSE = {"sessionId": "k", "workspaceId": "w", "jobName": "j", "status": "failed", "error": "e",
         "errorCode": "child_failed", "stepNumber": 1, "agentName": "a",
         "cause": {"sessionId": "g", "jobName": "h", "errorDetails": {"type": "ValueError", "message": "m"}}}


def every_field_of_every_event() -> list[dict[str, Any]]:
    """One event of each type with every optional field set (the constructors omit an unset one)."""
    lineage = {"correlationId": "c", "parentSessionId": "p", "rootSessionId": "r", "depth": 1}
    common = {"workspaceId": "w", "jobName": "j", "signalId": "s", "task": "t", "plannedSteps": PLAN, **lineage}
    return [
        dict(ev.queued(sessionId=SID, trigger="cascade", payload={"x": 1}, skipStates=["s1"], rerunOf="r0",
                       chat={"chatId": "c1", "turnId": "t1"},
                       traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", **common)),
        dict(ev.waiting(sessionId=SID, seq=2, reason="concurrency", sessionIds=["h1", "q1"])),
        dict(ev.start(sessionId=SID, runner="daemon-1", **common)),
        dict(ev.step_start(sessionId=SID, seq=3, stepNumber=1, agentName="a", stateId="s0", actionType="agent",
                           task="t", outputKey="a", input={"x": 1})),
        dict(ev.step_complete(sessionId=SID, seq=4, stepNumber=1, status="failed", durationMs=5, output=[1],
                              error="e", errorCode="c", childSessionId="k", usage={"inputTokens": 1, "model": "m"},
                              toolCalls=[{"toolCallId": "t1", "toolName": "add", "args": {"a": 1}, "result": "2",
                                          "durationMs": 3, "error": "x", "server": "s"}],
                              reasoning="because",
                              errorDetails={"type": "ShellError", "message": "m", "traceback": "t",
                                            "stderrTail": "s", "exitCode": 3},
                              cause=CAUSE)),
        dict(ev.step_skipped(sessionId=SID, seq=5, stateId="s1", agentName="b")),
        dict(ev.summary(sessionId=SID, seq=6, summary="s", keyDetails=[{"label": "l", "value": 1, "url": "u"}])),
        dict(ev.complete(sessionId=SID, seq=7, status="failed", durationMs=9, error="e", errorCode="c",
                         cause=CAUSE, duplicateOf="h1")),
    ]


def test_constructors_write_the_declared_fields_in_the_declared_order() -> None:
    """The TypedDict of each type is its whole wire shape, in wire order (`type` first): the key order is the bytes
    on the bus, which did not change when the producers moved onto the constructors."""
    for event in every_field_of_every_event():
        declared = list(EVENT_TYPES[event["type"]].__annotations__)
        assert list(event) == ["type", *(key for key in declared if key != "type")], event["type"]


def test_constructed_events_match_the_generated_schemas() -> None:
    doc = Document({"openapi": "3.1.0", "components": {"schemas": component_schemas()}})
    for event in every_field_of_every_event():
        doc.check_component(EVENT_TYPES[event["type"]].__name__, event)
        doc.check_component("Event", event)
    incomplete = dict(ev.complete(sessionId=SID, seq=2, status="interrupted", durationMs=0))
    del incomplete["durationMs"]
    with pytest.raises(AssertionError, match="durationMs"):
        doc.check_component("SessionCompleteEvent", incomplete)


# ---------------------------------------------------------------- real daemons


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("event-schemas"), WORKSPACES, ENV).start()
    try:
        yield d
    finally:
        d.stop()


def test_the_published_event_schemas_are_generated_and_flat(daemon: DaemonProcess) -> None:
    """One component per event type, `type` a `const`, `runner` and `durationMs` where the runtime writes them, every
    `$ref` into `#/components/schemas/` and no nested `$defs` or `nullable` (OpenAPI 3.1)."""
    doc = document(daemon).doc
    schemas = doc["components"]["schemas"]
    for event_type, cls in EVENT_TYPES.items():
        schema = schemas[cls.__name__]
        assert schema["properties"]["type"]["const"] == event_type
        assert {"type", "sessionId", "seq", "timestamp"} <= set(schema["required"])
    assert "runner" in schemas["SessionStartEvent"]["required"]
    assert "durationMs" in schemas["SessionCompleteEvent"]["required"]
    for name in ("SessionView", "AgentBlock", "SessionSummary", "Event", "PlannedStep", "ChunkBody"):
        assert name in schemas

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "$defs" not in node and "nullable" not in node
            if "$ref" in node:
                assert node["$ref"].startswith("#/components/schemas/")
                assert node["$ref"].removeprefix("#/components/schemas/") in schemas, node["$ref"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)


def test_events_of_representative_runs_match_their_schemas(daemon: DaemonProcess) -> None:
    doc = document(daemon)
    d = daemon
    sessions: dict[str, str] = {}
    sessions["completed"] = trigger(d, "core", "echo", {"n": 1})["sessionId"]
    sessions["completed-with-skip-and-summary"] = trigger(d, "quick", "branch", {"go": "left", "loud": False})[
        "sessionId"]
    sessions["failed"] = trigger(d, "core", "fail")["sessionId"]
    sessions["skipped"] = trigger(d, "core", "nomatch")["sessionId"]
    sessions["cascade-parent"] = trigger(d, "core", "fan", {"n": 2})["sessionId"]

    holder = trigger(d, "core", "hold-skip", {"duration": "60s"})["sessionId"]
    started(d, holder)
    sessions["skipped-duplicate"] = trigger(d, "core", "hold-skip", {"duration": "60s"})["sessionId"]
    assert ended(d, sessions["skipped-duplicate"])["errorCode"] == "skipped-duplicate"
    cancel(d, holder)
    sessions["cancelled"] = holder

    # A parked `queue` session (`session:waiting`, issue #16), cancelled while it waits.
    queue_holder = trigger(d, "core", "hold-queue", {"duration": "60s"})["sessionId"]
    started(d, queue_holder)
    parked = trigger(d, "core", "hold-queue", {"duration": "60s"})["sessionId"]
    wait_for(lambda: view(d, parked).get("waitingFor", {}).get("reason") == "concurrency", 30,
             what="the second hold-queue session to be parked")
    cancel(d, parked)
    cancel(d, queue_holder)
    sessions["cancelled-while-parked"] = parked
    sessions["cancelled-queue-holder"] = queue_holder

    tree = trigger(d, "core", "fan-slow")["sessionId"]
    child = wait_for(lambda: httpx.get(f"{d.url}/api/sessions/{tree}/children", timeout=10).json()["sessions"],
                     30, what="the child of fan-slow")[0]["sessionId"]
    started(d, child)
    cancel(d, tree)
    sessions["cancelled-tree-root"] = tree
    sessions["cancelled-tree-child"] = child

    for sid in list(sessions.values()):
        ended(d, sid)
    fan_child = httpx.get(f"{d.url}/api/sessions/{sessions['cascade-parent']}/children", timeout=10).json()
    sessions["cascade-child"] = fan_child["sessions"][0]["sessionId"]
    ended(d, sessions["cascade-child"])

    expected = {"completed": "completed", "completed-with-skip-and-summary": "completed", "failed": "failed",
                "skipped": "skipped", "skipped-duplicate": "skipped", "cancelled": "cancelled",
                "cascade-parent": "completed", "cascade-child": "completed", "cancelled-tree-root": "cancelled",
                "cancelled-tree-child": "cancelled", "cancelled-while-parked": "cancelled",
                "cancelled-queue-holder": "cancelled"}
    seen: set[str] = set()
    for kind, sid in sessions.items():
        events = durable_events(d, sid)
        assert events[-1]["status"] == expected[kind], (kind, events[-1])
        check_log(doc, events)
        seen.update(e["type"] for e in events)
        # The views these events fold into validate too (the same generation, the other side of the reducer).
        doc.check_component("SessionView", view(d, sid))
    assert seen == set(EVENT_TYPES), set(EVENT_TYPES) - seen  # every event type was exercised
    listed = httpx.get(f"{d.url}/api/sessions", params={"limit": 100}, timeout=10).json()["sessions"]
    for summary in listed:
        doc.check_component("SessionSummary", summary)


def test_a_crash_interrupted_session_matches_its_schema(tmp_path: Path) -> None:
    """kill -9 while a session runs, restart: recovery ends it `interrupted` with a `durationMs` counted from its
    `startedAt` (the drift of issue #13: it had none, against the published schema)."""
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    try:
        sid = trigger(d, "core", "slow", {"duration": "60s"})["sessionId"]
        started(d, sid)
        d.kill9()
        d.start()
        interrupted = wait_for(lambda: (v := view(d, sid))["status"] == "interrupted" and v, 40,
                               what="recovery to interrupt the session")
        doc = document(d)
        events = durable_events(d, sid)
        complete = events[-1]
        assert complete["status"] == "interrupted" and complete["errorCode"] == "interrupted"
        start = next(e for e in events if e["type"] == "session:start")
        assert start["runner"]  # recovery found the dead runner by it
        check_log(doc, events)
        # Counted from the session's start to the moment recovery wrote its end.
        assert complete["durationMs"] == duration_ms(start["timestamp"], complete["timestamp"])
        assert interrupted["durationMs"] == complete["durationMs"]
        # What recovery used to write fails the published schema: the test would have caught the drift.
        legacy = {k: v for k, v in complete.items() if k != "durationMs"}
        with pytest.raises(AssertionError, match="durationMs"):
            doc.check_component("SessionCompleteEvent", legacy)
    finally:
        d.stop()
