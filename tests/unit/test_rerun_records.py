"""`rerunOf` survives every path a session's start can take (issue #16): the envelope, `session:queued` written from
it (by the accept pipeline or, as a fallback, the consumer), the envelope recovery rebuilds from that event, and the
fold into the view and the summary."""

from __future__ import annotations

import pytest

from atlas.bus.records import envelope, envelope_from_queued
from atlas.runtime.accept import queued_event
from atlas.sessions import events
from atlas.sessions.reducer import build_view, summarize


def _envelope(rerun_of: str | None) -> dict[str, object]:
    return envelope(workspace_id="w", signal_id="s", session_id="new", correlation_id="c", root_session_id="new",
                    depth=0, trigger="rerun" if rerun_of else "http", payload={"n": 1},
                    accepted_at="2026-11-24T10:15:02.123Z", accepted_by="d1", rerun_of=rerun_of)


def test_rerun_of_goes_from_the_envelope_to_the_view_and_summary_and_back() -> None:
    env = _envelope("old")
    assert env["rerunOf"] == "old"
    queued = queued_event(env, None, "j")
    assert queued["rerunOf"] == "old" and queued["trigger"] == "rerun"
    rebuilt = envelope_from_queued(dict(queued))
    assert rebuilt["rerunOf"] == "old" and rebuilt["trigger"] == "rerun"
    view = build_view([queued])
    assert view["rerunOf"] == "old" and view["trigger"] == "rerun"
    assert summarize(view)["rerunOf"] == "old"


def test_a_run_that_is_no_rerun_has_no_rerun_of_key() -> None:
    queued = queued_event(_envelope(None), None, "j")
    assert "rerunOf" not in queued
    assert "rerunOf" not in envelope_from_queued(dict(queued))
    view = build_view([queued])
    assert "rerunOf" not in view and "rerunOf" not in summarize(view)


@pytest.mark.parametrize("trigger", ["http", "webhook", "schedule", "cascade", "ui", "cli", "chat", "rerun"])
def test_every_trigger_source_is_in_the_vocabulary(trigger: str) -> None:
    assert trigger in events.TRIGGERS


def test_an_unknown_trigger_source_is_refused() -> None:
    with pytest.raises(ValueError):
        events.queued(sessionId="x", workspaceId="w", jobName="j", signalId="s", task="t", trigger="browser",
                      correlationId="c", rootSessionId="x", depth=0, plannedSteps=[], payload={})
