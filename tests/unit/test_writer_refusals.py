"""A refused append whose log did not move is sent again (the long kill-a-daemon chaos variant, fifth session).

A 3-node cluster once answered a runner's `step:start` with "wrong last sequence" (JetStream 10164) although no
other writer had written: the same writer's next append, with the same expected sequence, was accepted. The runner
took the refusal for a lost race and the session ended `failed`/`internal_error`. Re-sending is safe because the
bus still enforces the expected sequence: if another writer did write, the retry is refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atlas.bus.client import WrongLastSequence
from atlas.sessions import events
from atlas.sessions.readmodel import open_read_model
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter
from tests.unit.fakes import FakeSessionLog

SID = "6f1c9d2e-1111-4222-8333-944455556666"


class RefusingLog(FakeSessionLog):
    """A session log that refuses the next `refusals` appends as a lost race, whatever the log holds."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 0

    async def append(self, event: dict[str, Any], expected_last_subject_seq: int | None,
                     retry_for: float | None = None) -> int:
        if self.refusals:
            self.refusals -= 1
            raise WrongLastSequence("wrong last sequence")
        return await super().append(event, expected_last_subject_seq, retry_for)


def _queued(seq: int) -> Any:
    return events.queued(sessionId=SID, seq=seq, workspaceId="core", jobName="echo", signalId="echo", task="echo",
                         trigger="http", correlationId=SID, rootSessionId=SID, depth=0, plannedSteps=[],
                         payload={})


def _summary(seq: int, text: str = "s") -> Any:
    return events.summary(sessionId=SID, seq=seq, summary=text, keyDetails=[])


async def test_a_refusal_while_the_log_stayed_put_is_sent_again(tmp_path: Path) -> None:
    log = RefusingLog()
    writer = SessionWriter(log, SessionStore(open_read_model(tmp_path / "atlas.db")), SID)
    await writer.append(_queued(writer.next_seq))
    log.refusals = 1
    await writer.append(_summary(writer.next_seq))
    assert [e["seq"] for e in log.events(SID)] == [1, 2]
    assert writer.seq == 2


async def test_a_refusal_after_another_writer_wrote_is_a_lost_race(tmp_path: Path) -> None:
    log = RefusingLog()
    store = SessionStore(open_read_model(tmp_path / "atlas.db"))
    writer = SessionWriter(log, store, SID)
    await writer.append(_queued(writer.next_seq))
    other = await SessionWriter.resume(log, store, SID)
    await other.append(_summary(other.next_seq, "the other writer's"))
    with pytest.raises(WrongLastSequence):
        await writer.append(_summary(writer.next_seq))
    assert [e["seq"] for e in log.events(SID)] == [1, 2]
