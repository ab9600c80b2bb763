"""Rows that could not be written are written newest first when the database is back.

The store writes its dirty views in batches on a thread; a batch that fails goes back to the dirty rows and is tried
again (issue #19, bug 9; a PostgreSQL outage, issue #15). The thread marks itself idle before the loop hears of the
failure, so a flush can take the next batch — with a newer view of the same session — in between, and then both
batches fail. Each used to go back with `setdefault`: the older batch, reported first, took the place, and the newer
view (a session's end) was dropped, leaving its row `active` for good (the PostgreSQL outage test's failure: three
sessions ended in the log, `active` in the database). Now the newer view wins, whatever the order of the reports.

Real parts: a private PostgreSQL server stopped and started again (`tests/pg.py`), the store's own writer thread.
The interleaving is made deterministic by waiting, on the loop's thread, for each batch's attempt to finish before
the loop hears of it.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from atlas.sessions import events
from atlas.sessions.readmodel_pg import PostgresReadModel
from atlas.sessions.store import SessionStore
from tests.pg import PgServer, pg_server


def status_in(dsn: str, sid: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM sessions WHERE session_id = %s", (sid,)).fetchone()
        return str(row[0]) if row else None


async def attempt(store: SessionStore) -> None:
    """Flush now and wait, blocking the loop on purpose, until the writer thread has tried the batch: its report
    (`_written`) is then queued on the loop, not yet run."""
    store.flush()
    assert store._idle.wait(20), "the writer thread never finished its batch"


async def test_the_newest_view_of_a_session_wins_when_two_failed_batches_go_back(tmp_path: object) -> None:
    with pg_server() as pg:
        await run(pg)


async def run(pg: PgServer) -> None:
    dsn = pg.create_database()
    store = SessionStore(PostgresReadModel(dsn))
    try:
        sid = str(uuid.uuid4())
        ids = {"sessionId": sid, "workspaceId": "core", "jobName": "echo", "task": "echo", "signalId": "echo",
               "correlationId": str(uuid.uuid4()), "rootSessionId": sid, "depth": 0, "plannedSteps": []}
        store.apply(dict(events.queued(**ids, trigger="http", payload={})), new=True)
        await attempt(store)
        await asyncio.sleep(0.05)  # let the loop hear of it (a success)
        assert status_in(dsn, sid) == "queued"

        pg.stop()
        store.apply(dict(events.start(**ids, runner="d1")))
        await attempt(store)  # fails; its report is queued behind the next batch
        store.apply(dict(events.complete(sessionId=sid, seq=3, status="completed", durationMs=1.0)))
        await attempt(store)  # the session's end, in a batch of its own, fails too
        pg.start()

        deadline = asyncio.get_running_loop().time() + 30
        while status_in(dsn, sid) != "completed":
            assert asyncio.get_running_loop().time() < deadline, f"the row stayed {status_in(dsn, sid)!r}"
            await asyncio.sleep(0.05)
    finally:
        store.close()
