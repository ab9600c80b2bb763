"""Tests of the session reducer (spec §3.4, §3.5, §13 items 10–12) and of the event constructors.

The reducer is folded on every daemon and in the browser, so these tests pin each rule of the §3.5 table, the
guards that make at-least-once delivery harmless, and the summary counting rule; property tests check that
duplicated or re-delivered events never change a view and that malformed events never raise.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.sessions import events as ev
from atlas.sessions.reducer import (
    EPHEMERAL_LIMIT,
    STATUSES,
    TERMINAL_STATUSES,
    apply_chunk,
    build_view,
    initial_view,
    is_terminal,
    reduce,
    summarize,
)

SID = "7f0c2a51-8d7e-4f43-9a51-0b8f6c1de2aa"
PARENT = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
CORR = "3b9e4c1a-5f6d-4e2b-8a7c-9d0e1f2a3b4c"
T0 = "2026-11-24T10:15:02.123Z"
T1 = "2026-11-24T10:15:03.000Z"
T2 = "2026-11-24T10:15:04.500Z"
T3 = "2026-11-24T10:15:05.000Z"
T9 = "2026-11-24T10:15:12.123Z"


def plan(*agents: str) -> list[dict[str, Any]]:
    return [
        ev.planned_step(
            agentName=name,
            stateId=f"step_{i}_{name}",
            task=f"task of {name}",
            actionType="agent",
            outputKey=f"out_{name}",
        )
        for i, name in enumerate(agents)
    ]


def queued_event(*agents: str, parent: str | None = None, seq: int = 1, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sessionId": SID,
        "seq": seq,
        "timestamp": T0,
        "workspaceId": "demo",
        "jobName": "count-and-sleep",
        "signalId": "count-and-sleep",
        "task": "count-and-sleep",
        "trigger": "cascade" if parent else "http",
        "correlationId": CORR,
        "parentSessionId": parent,
        "rootSessionId": parent or SID,
        "depth": 1 if parent else 0,
        "plannedSteps": plan(*agents),
        "payload": {"count": 3, "interval": 0.5},
    }
    fields.update(extra)
    return ev.queued(**fields)


def start_event(*agents: str, seq: int = 2, timestamp: str = T1, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sessionId": SID,
        "seq": seq,
        "timestamp": timestamp,
        "workspaceId": "demo",
        "jobName": "count-and-sleep",
        "task": "count-and-sleep",
        "signalId": "count-and-sleep",
        "correlationId": CORR,
        "rootSessionId": SID,
        "depth": 0,
        "plannedSteps": plan(*agents),
        "runner": "daemon-1",
    }
    fields.update(extra)
    return ev.start(**fields)


def step_start(seq: int, step: int, agent: str, index: int | None = None, **extra: Any) -> dict[str, Any]:
    i = step - 1 if index is None else index
    fields: dict[str, Any] = {
        "sessionId": SID,
        "seq": seq,
        "timestamp": T2,
        "stepNumber": step,
        "agentName": agent,
        "stateId": f"step_{i}_{agent}",
        "actionType": "agent",
        "task": f"rendered {agent}",
        "outputKey": f"out_{agent}",
    }
    fields.update(extra)
    return ev.step_start(**fields)


def step_complete(seq: int, step: int, status: str = "completed", **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sessionId": SID,
        "seq": seq,
        "timestamp": T3,
        "stepNumber": step,
        "status": status,
        "durationMs": 12,
    }
    fields.update(extra)
    return ev.step_complete(**fields)


def complete_event(seq: int, status: str = "completed", **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sessionId": SID,
        "seq": seq,
        "timestamp": T9,
        "status": status,
        "durationMs": 9123,
    }
    fields.update(extra)
    return ev.complete(**fields)


def fold(*events: dict[str, Any]) -> dict[str, Any]:
    return build_view(events)


def blocks(view: dict[str, Any]) -> list[dict[str, Any]]:
    return view["agentBlocks"]


# --- statuses ---------------------------------------------------------------------------------------------


def test_status_vocabulary() -> None:
    assert len(STATUSES) == 7
    assert TERMINAL_STATUSES == {"completed", "failed", "skipped", "cancelled", "interrupted"}
    assert STATUSES - TERMINAL_STATUSES == {"queued", "active"}
    assert all(is_terminal(s) for s in TERMINAL_STATUSES)
    assert not any(is_terminal(s) for s in ("queued", "active", "timed_out", None, 3, ["failed"]))


def test_initial_view_is_the_spec_seed_and_fresh_each_time() -> None:
    assert initial_view() == {
        "sessionId": "",
        "workspaceId": "",
        "jobName": "",
        "task": "",
        "status": "queued",
        "queuedAt": "",
        "startedAt": "",
        "agentBlocks": [],
        "lastSeq": 0,
    }
    initial_view()["agentBlocks"].append("x")
    assert initial_view()["agentBlocks"] == []


# --- session:queued ---------------------------------------------------------------------------------------


def test_queued_copies_identity_lineage_payload_and_plans_pending_blocks() -> None:
    view = fold(queued_event("counter", "stamp"))
    assert view["sessionId"] == SID
    assert view["workspaceId"] == "demo"
    assert view["jobName"] == "count-and-sleep"
    assert view["signalId"] == "count-and-sleep"
    assert view["task"] == "count-and-sleep"
    assert view["trigger"] == "http"
    assert view["correlationId"] == CORR
    assert view["rootSessionId"] == SID
    assert view["depth"] == 0
    assert view["payload"] == {"count": 3, "interval": 0.5}
    assert view["status"] == "queued"
    assert view["queuedAt"] == view["startedAt"] == T0
    assert view["lastSeq"] == 1
    assert "parentSessionId" not in view
    assert blocks(view) == [
        {
            "agentName": "counter",
            "stateId": "step_0_counter",
            "task": "task of counter",
            "actionType": "agent",
            "outputKey": "out_counter",
            "status": "pending",
            "toolCalls": [],
        },
        {
            "agentName": "stamp",
            "stateId": "step_1_stamp",
            "task": "task of stamp",
            "actionType": "agent",
            "outputKey": "out_stamp",
            "status": "pending",
            "toolCalls": [],
        },
    ]
    assert all("stepNumber" not in block for block in blocks(view))


def test_queued_child_keeps_parent_and_never_null_or_empty_parent() -> None:
    child = fold(queued_event("a", parent=PARENT))
    assert child["parentSessionId"] == PARENT
    assert child["rootSessionId"] == PARENT
    assert child["depth"] == 1
    assert child["trigger"] == "cascade"
    for bad in (None, ""):
        event = queued_event("a")
        event["parentSessionId"] = bad
        view = fold(event)
        assert "parentSessionId" not in view
        assert "parentSessionId" not in summarize(view)


# --- session:start ----------------------------------------------------------------------------------------


def test_start_activates_sets_started_at_and_replaces_pending_blocks() -> None:
    view = fold(queued_event("a", "b"), start_event("a", "c"))
    assert view["status"] == "active"
    assert view["startedAt"] == T1
    assert view["queuedAt"] == T0
    assert [(b["agentName"], b["status"]) for b in blocks(view)] == [("a", "pending"), ("c", "pending")]
    assert view["lastSeq"] == 2


def test_start_copies_lineage_when_present_and_keeps_it_otherwise() -> None:
    queued = queued_event("a", parent=PARENT)
    start = start_event("a", parentSessionId=PARENT, rootSessionId=PARENT, depth=1)
    view = fold(queued, start)
    assert (view["parentSessionId"], view["rootSessionId"], view["depth"]) == (PARENT, PARENT, 1)
    bare = {k: v for k, v in start.items() if k not in ("parentSessionId", "rootSessionId", "depth")}
    view = fold(queued, bare)
    assert (view["parentSessionId"], view["rootSessionId"], view["depth"]) == (PARENT, PARENT, 1)
    assert view["correlationId"] == CORR
    assert view["trigger"] == "cascade"  # only session:queued carries it


def test_start_without_plan_keeps_the_queued_plan() -> None:
    start = start_event()
    del start["plannedSteps"]
    view = fold(queued_event("a", "b"), start)
    assert [b["agentName"] for b in blocks(view)] == ["a", "b"]


# --- step:start -------------------------------------------------------------------------------------------


def test_step_start_turns_the_first_pending_block_of_that_agent_running() -> None:
    view = fold(queued_event("a", "b"), start_event("a", "b"), step_start(3, 1, "a", input={"x": 1}))
    first = blocks(view)[0]
    assert first == {
        "agentName": "a",
        "stateId": "step_0_a",
        "task": "rendered a",
        "actionType": "agent",
        "outputKey": "out_a",
        "status": "running",
        "toolCalls": [],
        "stepNumber": 1,
        "input": {"x": 1},
        "startedAt": T2,
    }
    assert blocks(view)[1]["status"] == "pending"
    assert view["lastSeq"] == 3


def test_step_start_keeps_the_planned_state_id_unless_the_event_has_one() -> None:
    event = step_start(3, 1, "a")
    del event["stateId"]
    view = fold(queued_event("a"), start_event("a"), event)
    assert blocks(view)[0]["stateId"] == "step_0_a"
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "a", stateId="elsewhere"))
    assert blocks(view)[0]["stateId"] == "elsewhere"


def test_step_start_for_an_unplanned_agent_appends_a_running_block() -> None:
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "z", index=7))
    assert [(b["agentName"], b["status"]) for b in blocks(view)] == [("a", "pending"), ("z", "running")]
    assert blocks(view)[1] == {
        "stepNumber": 1,
        "agentName": "z",
        "stateId": "step_7_z",
        "actionType": "agent",
        "task": "rendered z",
        "outputKey": "out_z",
        "status": "running",
        "startedAt": T2,
        "toolCalls": [],
    }


def test_step_start_for_an_existing_step_and_agent_is_a_no_op() -> None:
    base = fold(queued_event("a", "a"), start_event("a", "a"), step_start(3, 1, "a"))
    again = reduce(base, step_start(4, 1, "a", task="changed"))
    assert blocks(again) == blocks(base)
    assert again["lastSeq"] == 4  # applied (it passed the guards) but with no effect on blocks


def test_a_second_pending_block_with_the_same_agent_takes_the_second_step() -> None:
    view = fold(
        queued_event("a", "a"),
        start_event("a", "a"),
        step_start(3, 1, "a"),
        step_complete(4, 1),
        step_start(5, 2, "a"),
    )
    assert [(b.get("stepNumber"), b["stateId"], b["status"]) for b in blocks(view)] == [
        (1, "step_0_a", "completed"),
        (2, "step_1_a", "running"),
    ]


# --- step:complete ----------------------------------------------------------------------------------------


def test_step_complete_updates_the_block_and_clears_ephemeral() -> None:
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "a"))
    view = apply_chunk(view, {"sessionId": SID, "stepNumber": 1, "chunk": {"type": "progress", "current": 1}})
    assert blocks(view)[0]["ephemeral"] == [{"type": "progress", "current": 1}]
    usage = {"inputTokens": 10, "outputTokens": 5, "model": "m", "cacheReadTokens": None}
    view = reduce(
        view,
        step_complete(
            4,
            1,
            output={"counted": 3},
            usage=usage,
            childSessionId=PARENT,
            toolCalls=[{"name": "t"}],
        ),
    )
    block = blocks(view)[0]
    assert block["status"] == "completed"
    assert block["durationMs"] == 12
    assert block["output"] == {"counted": 3}
    assert block["usage"] == {"inputTokens": 10, "outputTokens": 5, "model": "m"}
    assert block["childSessionId"] == PARENT
    assert block["toolCalls"] == [{"name": "t"}]
    assert "ephemeral" not in block
    assert "error" not in block


def test_step_complete_failed_records_error_and_keeps_own_fields_it_lacks() -> None:
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "a"))
    view = reduce(view, step_complete(4, 1, "failed", error="boom", errorCode="agent_error"))
    block = blocks(view)[0]
    assert (block["status"], block["error"], block["errorCode"]) == ("failed", "boom", "agent_error")
    assert block["task"] == "rendered a"  # its own fields stay
    assert "output" not in block


def test_step_complete_without_a_matching_block_appends_a_placeholder() -> None:
    view = fold(queued_event("a"), start_event("a"), step_complete(3, 9, output=1))
    assert blocks(view)[1] == {
        "stepNumber": 9,
        "agentName": "unknown",
        "actionType": "agent",
        "task": "",
        "status": "completed",
        "toolCalls": [],
        "durationMs": 12,
        "output": 1,
    }
    assert blocks(view)[0]["status"] == "pending"  # a pending block never matches by its unset stepNumber


# --- step:skipped -----------------------------------------------------------------------------------------


def test_step_skipped_marks_the_first_pending_block_of_that_state() -> None:
    view = fold(
        queued_event("a", "b"),
        start_event("a", "b"),
        ev.step_skipped(sessionId=SID, seq=3, timestamp=T2, stateId="step_1_b", agentName="b"),
    )
    assert [b["status"] for b in blocks(view)] == ["pending", "skipped"]


def test_step_skipped_requires_the_agent_name_when_given() -> None:
    view = fold(
        queued_event("a", "b"),
        start_event("a", "b"),
        ev.step_skipped(sessionId=SID, seq=3, timestamp=T2, stateId="step_1_b", agentName="a"),
    )
    assert [b["status"] for b in blocks(view)] == ["pending", "pending"]
    assert view["lastSeq"] == 3
    view = reduce(view, ev.step_skipped(sessionId=SID, seq=4, timestamp=T2, stateId="step_0_a"))
    assert [b["status"] for b in blocks(view)] == ["skipped", "pending"]


# --- session:complete -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("pending", "skipped"),
        ("running", "failed"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("skipped", "skipped"),
    ],
)
def test_session_complete_settles_every_block(before: str, after: str) -> None:
    view = fold(queued_event("a"), start_event("a"))
    view = {**view, "agentBlocks": [{**blocks(view)[0], "status": before}]}
    view = reduce(
        view, complete_event(3, "cancelled", error="Cancelled by user", errorCode="cancelled_by_user")
    )
    assert blocks(view)[0]["status"] == after


def test_session_complete_fails_a_running_block_with_the_session_error() -> None:
    view = fold(queued_event("a", "b"), start_event("a", "b"), step_start(3, 1, "a"))
    view = apply_chunk(view, {"sessionId": SID, "chunk": {"type": "log", "stream": "stdout", "line": "hi"}})
    view = reduce(view, complete_event(4, "failed", error="Job timed out after 1s", errorCode="timeout"))
    running, pending = blocks(view)
    assert (running["status"], running["error"], running["errorCode"]) == (
        "failed",
        "Job timed out after 1s",
        "timeout",
    )
    assert "ephemeral" not in running
    assert pending["status"] == "skipped"
    assert (view["status"], view["error"], view["errorCode"]) == (
        "failed",
        "Job timed out after 1s",
        "timeout",
    )


def test_results_are_keyed_by_output_key_over_completed_blocks_with_output() -> None:
    view = fold(
        queued_event("a", "b", "c", "d"),
        start_event("a", "b", "c", "d"),
        step_start(3, 1, "a"),
        step_complete(4, 1, output={"counted": 3}),
        step_start(5, 2, "b"),
        step_complete(6, 2, output=0),  # falsy but not null: kept
        step_start(7, 3, "c"),
        step_complete(8, 3),  # no output
        step_start(9, 4, "d", outputKey="renamed"),
        step_complete(10, 4, "failed", output="partial", error="x", errorCode="agent_error"),
        complete_event(11, "failed", error="x", errorCode="agent_error"),
    )
    assert view["results"] == {"out_a": {"counted": 3}, "out_b": 0}


def test_results_are_omitted_when_empty() -> None:
    view = fold(queued_event("a"), start_event("a"), complete_event(3, "skipped", errorCode="no_transition"))
    assert "results" not in view
    assert blocks(view)[0]["status"] == "skipped"


def test_session_complete_sets_times_and_duration() -> None:
    view = fold(queued_event("a"), start_event("a"), complete_event(3))
    assert (view["status"], view["completedAt"], view["durationMs"]) == ("completed", T9, 9123)
    assert "error" not in view and "errorCode" not in view


def test_session_complete_computes_duration_when_the_event_has_none() -> None:
    event = complete_event(3)
    del event["durationMs"]
    view = fold(queued_event("a"), start_event("a"), event)
    assert view["durationMs"] == 9123  # T9 - T1
    # A session that never started measures from queuedAt (= startedAt).
    event = complete_event(2, "cancelled", errorCode="cancelled_by_user")
    del event["durationMs"]
    view = fold(queued_event("a"), event)
    assert view["startedAt"] == T0
    assert view["durationMs"] == 10000


def test_session_complete_with_a_non_terminal_status_is_not_applied() -> None:
    base = fold(queued_event("a"), start_event("a"))
    event = complete_event(3)
    event["status"] = "active"
    assert reduce(base, event) is base


# --- session:summary and the guards -----------------------------------------------------------------------


def test_summary_sets_ai_summary_even_after_the_session_ended() -> None:
    summary = ev.summary(
        sessionId=SID,
        seq=4,
        timestamp=T9,
        summary="Counted to 3",
        keyDetails=[{"label": "count", "value": 3, "url": None}],
    )
    view = fold(queued_event("a"), start_event("a"), complete_event(3), summary)
    assert view["aiSummary"] == {"summary": "Counted to 3", "keyDetails": [{"label": "count", "value": 3}]}
    assert view["lastSeq"] == 4
    assert summarize(view)["aiSummary"] == view["aiSummary"]


def test_old_seq_changes_nothing() -> None:
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "a"))
    for stale in (queued_event("b", seq=1), start_event("z", seq=3), step_complete(2, 1), complete_event(3)):
        assert reduce(view, stale) is view


def test_events_without_a_valid_seq_are_ignored() -> None:
    view = fold(queued_event("a"))
    for seq in (None, "3", 2.0, True, -1, 0):
        event = start_event("a")
        event["seq"] = seq
        assert reduce(view, event) is view
    event = start_event("a")
    del event["seq"]
    assert reduce(view, event) is view


@pytest.mark.parametrize(
    "late",
    [
        start_event("z", seq=4),
        step_start(4, 1, "a"),
        step_complete(4, 1),
        ev.step_skipped(sessionId=SID, seq=4, stateId="step_0_a"),
        complete_event(4, "failed", error="again"),
        queued_event("z", seq=4),
    ],
)
def test_a_terminal_view_only_accepts_session_summary(late: dict[str, Any]) -> None:
    view = fold(queued_event("a"), start_event("a"), complete_event(3, "cancelled", errorCode="replaced"))
    assert reduce(view, late) is view


def test_every_applied_event_sets_last_seq_and_unknown_types_are_ignored() -> None:
    view = fold(queued_event("a"), start_event("a"))
    assert reduce(view, {"type": "session:future", "sessionId": SID, "seq": 3, "timestamp": T2}) is view
    assert reduce(view, step_start(7, 1, "a"))["lastSeq"] == 7


# --- ephemeral chunks -------------------------------------------------------------------------------------


def test_chunk_goes_to_the_block_with_its_step_number_else_the_first_running_block() -> None:
    view = fold(
        queued_event("a", "b"),
        start_event("a", "b"),
        step_start(3, 1, "a"),
        step_complete(4, 1),
        step_start(5, 2, "b"),
    )
    by_number = apply_chunk(
        view, {"sessionId": SID, "stepNumber": 1, "chunk": {"type": "text-delta", "delta": "x"}}
    )
    assert blocks(by_number)[0]["ephemeral"] == [{"type": "text-delta", "delta": "x"}]
    fallback = apply_chunk(view, {"sessionId": SID, "stepNumber": 42, "chunk": {"type": "progress"}})
    assert blocks(fallback)[1]["ephemeral"] == [{"type": "progress"}]
    assert by_number["lastSeq"] == fallback["lastSeq"] == view["lastSeq"] == 5


def test_chunk_without_a_target_or_of_an_unknown_type_is_ignored() -> None:
    view = fold(queued_event("a"), start_event("a"))
    assert apply_chunk(view, {"sessionId": SID, "chunk": {"type": "progress"}}) is view
    running = reduce(view, step_start(3, 1, "a"))
    assert apply_chunk(running, {"sessionId": SID, "chunk": {"type": "video"}}) is running
    assert apply_chunk(running, {"sessionId": SID, "chunk": "progress"}) is running
    assert apply_chunk(running, {"sessionId": SID}) is running


def test_chunks_are_capped_at_the_last_fifty() -> None:
    view = fold(queued_event("a"), start_event("a"), step_start(3, 1, "a"))
    for i in range(EPHEMERAL_LIMIT + 25):
        view = apply_chunk(
            view, {"sessionId": SID, "stepNumber": 1, "chunk": {"type": "progress", "current": i}}
        )
    ephemeral = blocks(view)[0]["ephemeral"]
    assert EPHEMERAL_LIMIT == 50
    assert len(ephemeral) == 50
    assert [c["current"] for c in ephemeral] == list(range(25, 75))


def test_chunks_after_the_end_are_ignored() -> None:
    view = fold(
        queued_event("a"), start_event("a"), step_start(3, 1, "a"), step_complete(4, 1), complete_event(5)
    )
    assert apply_chunk(view, {"sessionId": SID, "stepNumber": 1, "chunk": {"type": "progress"}}) is view


# --- summary ----------------------------------------------------------------------------------------------


def run_of(*agents: str) -> list[dict[str, Any]]:
    """queued, start, then step 1 completed and step 2 failed-running; the rest of the plan pending."""
    return [
        queued_event(*agents, parent=PARENT),
        start_event(*agents, parentSessionId=PARENT, rootSessionId=PARENT, depth=1),
        step_start(3, 1, agents[0]),
        step_complete(4, 1, output="ok"),
        step_start(5, 2, agents[1]),
    ]


def test_summary_while_queued_counts_the_whole_plan() -> None:
    summary = summarize(fold(queued_event("a", "b", "a")))
    assert (summary["status"], summary["stepCount"], summary["agentNames"]) == ("queued", 3, ["a", "b", "a"])


def test_summary_while_active_counts_pending_blocks_too() -> None:
    summary = summarize(build_view(run_of("a", "b", "c", "a")))
    assert summary["status"] == "active"
    assert summary["stepCount"] == 4
    assert summary["agentNames"] == ["a", "b", "c", "a"]


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_summary_once_terminal_counts_only_blocks_that_ran(status: str) -> None:
    events = [*run_of("a", "b", "c", "a"), complete_event(6, status, error="e", errorCode="interrupted")]
    summary = summarize(build_view(events))
    # block 1 completed, block 2 running → failed by the session's end; the pending ones are skipped.
    assert summary["stepCount"] == 2
    assert summary["agentNames"] == ["a", "b"]
    assert len(summary["agentNames"]) == summary["stepCount"]


def test_summary_has_exactly_the_spec_keys() -> None:
    view = build_view(
        [*run_of("a", "b"), complete_event(6, "interrupted", error="died", errorCode="interrupted")]
    )
    summary = summarize(view)
    assert summary == {
        "sessionId": SID,
        "workspaceId": "demo",
        "jobName": "count-and-sleep",
        "task": "count-and-sleep",
        "status": "interrupted",
        "startedAt": T1,
        "completedAt": T9,
        "durationMs": 9123,
        "stepCount": 2,
        "agentNames": ["a", "b"],
        "error": "died",
        "parentSessionId": PARENT,
        "correlationId": CORR,
        "signalId": "count-and-sleep",
        "trigger": "cascade",
        "rootSessionId": PARENT,
        "depth": 1,
        "queuedAt": T0,
        "errorCode": "interrupted",
    }
    root = summarize(fold(queued_event("a")))
    assert set(root) == {
        "sessionId",
        "workspaceId",
        "jobName",
        "task",
        "status",
        "startedAt",
        "stepCount",
        "agentNames",
        "correlationId",
        "signalId",
        "trigger",
        "rootSessionId",
        "depth",
        "queuedAt",
    }
    assert root["startedAt"] == root["queuedAt"] == T0


# --- purity -----------------------------------------------------------------------------------------------


def full_log() -> list[dict[str, Any]]:
    return [
        *run_of("a", "b", "c"),
        step_complete(6, 2, output={"n": [1, 2]}),
        ev.step_skipped(sessionId=SID, seq=7, timestamp=T3, stateId="step_2_c", agentName="c"),
        ev.summary(
            sessionId=SID, seq=8, timestamp=T3, summary="done", keyDetails=[{"label": "n", "value": 2}]
        ),
        complete_event(9),
    ]


def test_folding_is_pure_and_repeatable() -> None:
    log = full_log()
    snapshot = copy.deepcopy(log)
    first = build_view(log)
    second = build_view(log)
    assert first == second
    assert log == snapshot
    assert first["status"] == "completed"
    assert first["results"] == {"out_a": "ok", "out_b": {"n": [1, 2]}}


def test_reduce_and_apply_chunk_never_mutate_their_inputs() -> None:
    view = initial_view()
    for event in full_log()[:-1]:
        before_view, before_event = copy.deepcopy(view), copy.deepcopy(event)
        new = reduce(view, event)
        assert view == before_view and event == before_event
        assert new is not view
        view = new
        chunk = {"sessionId": SID, "chunk": {"type": "progress", "data": {"deep": [1]}}}
        before_view, before_chunk = copy.deepcopy(view), copy.deepcopy(chunk)
        chunked = apply_chunk(view, chunk)
        assert view == before_view and chunk == before_chunk
        for block in chunked["agentBlocks"]:
            for held in block.get("ephemeral", []):
                held["data"]["deep"].append("mutated")
        assert chunk == before_chunk  # the view holds its own copy of the chunk
    # The view never aliases an event's values either.
    log = full_log()
    built = build_view(log)
    built["payload"]["count"] = 99
    built["results"]["out_b"]["n"].append(3)
    assert log[0]["payload"]["count"] == 3
    assert log[5]["output"] == {"n": [1, 2]}


# --- property tests ---------------------------------------------------------------------------------------


@st.composite
def session_logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid log: queued, then start and steps (or an early end), maybe a summary, then complete."""
    agents = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=4))
    parent = draw(st.sampled_from([None, PARENT]))
    log: list[dict[str, Any]] = [queued_event(*agents, parent=parent)]

    def seq() -> int:
        return len(log) + 1

    started = draw(st.booleans()) or (bool(agents) and draw(st.booleans()))
    step = 0
    if started:
        log.append(start_event(*agents))
        for index, agent in enumerate(agents):
            action = draw(st.sampled_from(["ok", "fail", "skip", "running", "stop"]))
            if action == "stop":
                break
            if action == "skip":
                log.append(
                    ev.step_skipped(sessionId=SID, seq=seq(), timestamp=T2, stateId=f"step_{index}_{agent}")
                )
                continue
            step += 1
            log.append(step_start(seq(), step, agent, index=index, input={"i": index}))
            if action == "running":
                break
            output = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3)))
            if action == "ok":
                log.append(step_complete(seq(), step, output=output))
            else:
                log.append(step_complete(seq(), step, "failed", error="boom", errorCode="agent_error"))
                break
        if draw(st.booleans()):  # an unplanned step
            step += 1
            log.append(step_start(seq(), step, "extra"))
            log.append(step_complete(seq(), step, output={"extra": True}))
        if draw(st.booleans()):
            log.append(ev.summary(sessionId=SID, seq=seq(), timestamp=T3, summary="s", keyDetails=[]))
    status = draw(st.sampled_from(sorted(TERMINAL_STATUSES)))
    log.append(complete_event(seq(), status, error="e" if status != "completed" else None))
    return log


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=session_logs(), data=st.data())
def test_duplicates_and_redeliveries_never_change_the_view(
    log: list[dict[str, Any]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(log)), label="prefix length")
    prefix = log[:cut]
    snapshot = copy.deepcopy(prefix)
    once = build_view(prefix)

    duplicated = [event for event in prefix for _ in range(2)]
    assert build_view(duplicated) == once

    noisy: list[dict[str, Any]] = []
    for i, event in enumerate(prefix):
        noisy.append(event)
        redeliveries = data.draw(
            st.lists(st.integers(min_value=0, max_value=i), max_size=3), label=f"after {i}"
        )
        noisy.extend(prefix[j] for j in redeliveries)
    assert build_view(noisy) == once

    assert prefix == snapshot  # folding never mutates the events
    assert once["lastSeq"] == cut  # every event of a valid log applies
    assert json.loads(json.dumps(once)) == once  # views stay plain JSON
    assert once.get("parentSessionId", "x") not in (None, "")
    summary = summarize(once)
    assert len(summary["agentNames"]) == summary["stepCount"]
    assert is_terminal(once["status"]) == (cut == len(log))
    if is_terminal(once["status"]):
        assert all(b["status"] in ("completed", "failed", "skipped") for b in once["agentBlocks"])
        assert summary["stepCount"] == sum(
            b["status"] in ("completed", "failed") for b in once["agentBlocks"]
        )
    else:
        assert summary["stepCount"] == len(once["agentBlocks"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
event_keys = st.sampled_from(
    [
        "seq",
        "type",
        "sessionId",
        "timestamp",
        "stepNumber",
        "agentName",
        "stateId",
        "status",
        "plannedSteps",
        "output",
        "error",
        "errorCode",
        "durationMs",
        "toolCalls",
        "keyDetails",
        "summary",
        "parentSessionId",
        "usage",
        "chunk",
    ]
)
random_events = st.fixed_dictionaries(
    {
        "type": st.one_of(
            st.sampled_from(
                [
                    "session:queued",
                    "session:start",
                    "step:start",
                    "step:complete",
                    "step:skipped",
                    "session:summary",
                    "session:complete",
                ]
            ),
            json_values,
        ),
        "seq": st.one_of(st.integers(min_value=-2, max_value=30), json_values),
    }
).flatmap(
    lambda base: st.dictionaries(event_keys | st.text(max_size=4), json_values, max_size=6).map(
        lambda extra: {**extra, **base}
    )
) | st.dictionaries(event_keys | st.text(max_size=4), json_values, max_size=8)


def seed_views() -> list[dict[str, Any]]:
    log = full_log()
    return [initial_view(), build_view(log[:1]), build_view(log[:5]), build_view(log[:-2]), build_view(log)]


SEEDS = seed_views()


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(random_events, max_size=6), chunk=random_events, seed=st.sampled_from(range(len(SEEDS)))
)
def test_reduce_never_raises_on_malformed_events(
    events: list[dict[str, Any]], chunk: dict[str, Any], seed: int
) -> None:
    view = SEEDS[seed]
    before = copy.deepcopy(view)
    for event in events:
        snapshot = copy.deepcopy(event)
        view = reduce(view, event)
        assert event == snapshot
        view = apply_chunk(view, chunk)
        view = apply_chunk(view, {"sessionId": SID, "stepNumber": event.get("stepNumber"), "chunk": event})
        summarize(view)
    assert SEEDS[seed] == before
    assert view["status"] in STATUSES


def test_reduce_ignores_non_mapping_events() -> None:
    view = initial_view()
    for junk in (None, 3, "session:start", ["seq", 1]):
        assert reduce(view, junk) is view  # type: ignore[arg-type]
        assert apply_chunk(view, junk) is view  # type: ignore[arg-type]


# --- event constructors -----------------------------------------------------------------------------------


def test_now_iso_is_rfc3339_utc_with_milliseconds() -> None:
    stamp = ev.now_iso()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", stamp)
    assert abs((ev.parse_iso(stamp) - datetime.now(UTC)).total_seconds()) < 5
    assert ev.parse_iso(T0) == datetime(2026, 11, 24, 10, 15, 2, 123000, tzinfo=UTC)
    assert ev.format_iso(ev.parse_iso("2026-11-24T11:15:02.123456+01:00")) == T0
    assert ev.duration_ms(T1, T0) == 0
    with pytest.raises(ValueError):
        ev.parse_iso("yesterday")


def test_constructors_set_type_and_omit_none_optionals() -> None:
    queued = queued_event("a")
    assert queued["type"] == "session:queued" and queued["seq"] == 1 and "parentSessionId" not in queued
    assert start_event("a")["type"] == "session:start"
    started = step_start(3, 1, "a")
    assert started["type"] == "step:start" and "input" not in started
    done = step_complete(4, 1)
    assert done == {
        "type": "step:complete",
        "sessionId": SID,
        "seq": 4,
        "timestamp": T3,
        "stepNumber": 1,
        "status": "completed",
        "durationMs": 12,
        "toolCalls": [],
    }
    skipped = ev.step_skipped(sessionId=SID, seq=5, stateId="s")
    assert skipped["type"] == "step:skipped" and "agentName" not in skipped
    assert re.fullmatch(r".*\.\d{3}Z", skipped["timestamp"])
    assert ev.summary(sessionId=SID, seq=6, summary="x")["keyDetails"] == []
    ended = complete_event(7, "failed")
    assert ended["type"] == "session:complete" and "error" not in ended and "errorCode" not in ended


@pytest.mark.parametrize(
    "bad",
    [
        lambda: complete_event(3, "active"),
        lambda: step_complete(3, 1, "skipped"),
        lambda: step_complete(3, 0),
        lambda: step_start(0, 1, "a"),
        lambda: step_start(3, 1, "a", actionType="emit"),
        lambda: queued_event("a", trigger="manual"),
        lambda: queued_event("a", depth=-1),
        lambda: queued_event("a", sessionId=""),
        lambda: complete_event(3, durationMs=-1),
    ],
)
def test_constructors_reject_programming_errors(bad: Any) -> None:
    with pytest.raises(ValueError):
        bad()


def test_truncate_recorded_caps_at_256_kib() -> None:
    small = {"text": "x" * 1000}
    assert ev.truncate_recorded(small) is small
    exact = "y" * (256 * 1024 - 2)  # its JSON text, quotes included, is exactly 256 KiB
    assert ev.truncate_recorded(exact) is exact
    big = {"text": "é" * (200 * 1024)}
    truncated = ev.truncate_recorded(big)
    assert truncated["truncated"] is True
    preview = truncated["preview"]
    assert preview.startswith('{"text":"éé')
    assert len(preview.encode("utf-8")) <= 4096
    assert len(preview.encode("utf-8")) >= 4094
    recorded = step_complete(3, 1, output=big)
    assert recorded["output"] == truncated
    assert step_start(3, 1, "a", input=big)["input"] == truncated
