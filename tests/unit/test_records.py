"""Records rebuilt from events (`bus/records.py`): what recovery republishes must still mean what was accepted."""

from __future__ import annotations

from atlas.bus.records import envelope_from_queued
from atlas.sessions import events

COMMON = {"workspaceId": "w", "jobName": "j", "signalId": "s", "task": "t", "trigger": "http",
          "correlationId": "c", "rootSessionId": "r", "depth": 0, "plannedSteps": []}


def test_an_envelope_rebuilt_from_session_queued_keeps_skip_states() -> None:
    queued = events.queued(sessionId="r", payload={"x": 1}, skipStates=["draft", "review"], **COMMON)
    envelope = envelope_from_queued(dict(queued))
    assert envelope["skipStates"] == ["draft", "review"]
    assert envelope["payload"] == {"x": 1} and envelope["sessionId"] == "r"


def test_without_skip_states_the_key_is_absent() -> None:
    queued = events.queued(sessionId="r", payload=None, **COMMON)
    assert "skipStates" not in queued
    assert "skipStates" not in envelope_from_queued(dict(queued))
