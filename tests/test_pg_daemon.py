"""A daemon whose read model is PostgreSQL (`ATLAS_DATABASE_URL`, issue #15): sessions go to the database, survive a
restart there, and a database that goes away costs no row (the store retries, as it does on a full disk).

Real parts: a private PostgreSQL 15 server (`tests/pg.py`), a real atlasd (`tests/daemon_proc.py`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg

from atlas.sessions.readmodel_pg import PostgresReadModel
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.pg import PgServer, pg_server
from tests.test_api_core import post, wait_terminal


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_sessions_are_stored_in_postgresql_and_survive_a_restart(pg_dsn: str, tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], {"ATLAS_DATABASE_URL": pg_dsn}).start()
    try:
        r = post(d, "core", "echo", {"payload": {"n": 1}})
        assert r.status_code == 202, r.text
        sid, cid = r.json()["sessionId"], r.json()["correlationId"]
        assert wait_terminal(d, sid)["status"] == "completed"
        wait_for(lambda: rows(pg_dsn, "SELECT status FROM sessions WHERE session_id = %s", (sid,)) == [("completed",)],
                 what="the completed row in PostgreSQL")
        [(correlation, last_seq)] = rows(pg_dsn, "SELECT correlation_id, last_seq FROM sessions WHERE session_id = %s",
                                         (sid,))
        assert correlation == cid and last_seq >= 4
        assert not (tmp_path / "home" / "atlas.db").exists()  # no SQLite read model beside it
        assert d.stop() == 0
        assert pg_dsn not in d.log()  # the URL may carry a password: never logged
        d.start()
        listed = httpx.get(f"{d.url}/api/sessions", params={"correlationId": cid}, timeout=10).json()
        assert [s["sessionId"] for s in listed["sessions"]] == [sid]
        assert httpx.get(f"{d.url}/api/sessions/{sid}", timeout=10).json()["status"] == "completed"
    finally:
        d.stop()


def test_daemons_starting_together_migrate_the_schema_once(pg_dsn: str) -> None:
    opened: list[PostgresReadModel] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(PostgresReadModel(pg_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(opened) == 6
    assert rows(pg_dsn, "SELECT version FROM schema_migrations") == [(1,)]
    for rm in opened:
        rm.close()


def test_rows_written_while_the_database_was_down_arrive_when_it_is_back(tmp_path: Path) -> None:
    """The store keeps the rows it could not write and retries: every accepted session gets its row."""
    with pg_server() as pg:
        dsn = pg.create_database()
        d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], {"ATLAS_DATABASE_URL": dsn}).start()
        try:
            pg.stop()
            sids = []
            for n in range(5):
                r = post(d, "core", "echo", {"payload": {"n": n}})
                assert r.status_code == 202, r.text
                sids.append(r.json()["sessionId"])
            for sid in sids:  # they run and end while the database is down, served from memory
                assert wait_terminal(d, sid)["status"] == "completed"
            listing = httpx.get(f"{d.url}/api/sessions", timeout=30)  # a query the database must answer
            assert listing.status_code == 503, listing.text
            assert listing.json()["error"]["code"] == "read_model_unavailable"
            pg.start()
            wait_for(lambda: sorted(r[0] for r in rows(dsn, "SELECT session_id FROM sessions WHERE status = "
                                                          "'completed'")) == sorted(sids),
                     30, what="the rows of the sessions accepted while PostgreSQL was down")
        finally:
            _stop(d, pg)


def _stop(d: DaemonProcess, pg: PgServer) -> None:
    if not pg.running:
        pg.start()
    d.stop()
