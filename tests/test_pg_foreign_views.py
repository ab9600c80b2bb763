"""A shared read model (PostgreSQL, issue #15) and sessions another daemon writes: a daemon that folds one from its
log — a read of a session the database lacks (`rebuild_view`, what `GET /api/sessions/<id>` does then), or recovery
reconciling a row its writer left behind — writes the row it folded, and then lets the database answer: a view kept
in its memory would stop where its fold did, while the session's own daemon writes the rest.

In process: one daemon on PostgreSQL; the other daemon is played by the test, which appends the session's events
to the bus with its own expected sequences and writes its rows through its own PostgreSQL adapter (as another
daemon's writer does).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from atlas.runtime.daemon import Daemon
from atlas.sessions import events
from atlas.sessions.readmodel_pg import PostgresReadModel
from atlas.sessions.reducer import initial_view, reduce, summarize
from tests.daemon_proc import FIXTURES
from tests.inproc import running

OTHER = "daemon-played-by-the-test"


async def append(d: Daemon, event: events.DurableEvent, after: int) -> int:
    """The other daemon's append: expected to follow its previous event at stream sequence `after`."""
    return await d.bus.append_event(dict(event), expected_last_subject_seq=after)


async def test_a_session_folded_for_a_read_is_not_kept_in_memory_once_its_row_is_written(
        tmp_path: Path, pg_dsn: str) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), database_url=pg_dsn) as d:
        assert d.store.shared
        sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
        ids = {"sessionId": sid, "workspaceId": "core", "jobName": "echo", "task": "echo", "signalId": "echo",
               "correlationId": cid, "rootSessionId": sid, "depth": 0, "plannedSteps": []}
        queued = events.queued(**ids, trigger="http", payload={"n": 1})
        started = events.start(**ids, runner=OTHER)
        at = await append(d, started, await append(d, queued, 0))  # its rows not written yet (the database lacked
        # them while the other daemon could not write: an outage)

        folded = await d.rebuild_view(sid)  # the API's read of a session the database lacks
        assert folded is not None and folded["status"] == "active"
        await d.store.committed(sid)  # the folded row is in the database

        ended = events.complete(sessionId=sid, seq=3, status="completed", durationMs=1.0)
        await append(d, ended, at)
        view = initial_view()
        for event in (queued, started, ended):
            view = reduce(view, event)
        other = PostgresReadModel(pg_dsn)
        try:
            assert other.upsert(view, summarize(view))  # the other daemon's writer writes the session's end
        finally:
            other.close()
        now = d.store.view(sid)
        assert now is not None and now["status"] == "completed", now  # the database answers, not a stale fold
