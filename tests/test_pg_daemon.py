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


def test_while_the_database_is_down_triggers_are_refused_and_no_accepted_session_loses_its_row(
    tmp_path: Path,
) -> None:
    """Issue #15 item 5: new triggers answer 503 once the shared read model cannot be written (another daemon could
    not show them); what was accepted runs on, and every accepted session gets its terminal row once PostgreSQL is
    back (the store keeps and retries the rows)."""
    with pg_server() as pg:
        dsn = pg.create_database()
        d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], {"ATLAS_DATABASE_URL": dsn}).start()
        try:
            pg.stop()
            accepted: list[str] = []
            refused: list[httpx.Response] = []

            def trigger_until_refused() -> bool:
                r = post(d, "core", "echo", {"payload": {"n": len(accepted)}})
                if r.status_code == 202:
                    accepted.append(r.json()["sessionId"])
                    return False
                refused.append(r)
                return True

            wait_for(trigger_until_refused, 60, interval=0.05, what="a trigger refused while PostgreSQL is down")
            assert refused[0].status_code == 503, refused[0].text
            assert refused[0].json()["error"]["code"] == "read_model_unavailable"
            for sid in accepted:  # they run and end while the database is down, served from memory
                assert wait_terminal(d, sid)["status"] == "completed"
            listing = httpx.get(f"{d.url}/api/sessions", timeout=30)  # a query the database must answer
            assert listing.status_code == 503, listing.text
            assert listing.json()["error"]["code"] == "read_model_unavailable"
            pg.start()
            wait_for(lambda: sorted(r[0] for r in rows(dsn, "SELECT session_id FROM sessions WHERE status = "
                                                          "'completed'")) == sorted(accepted),
                     30, what="the rows of the sessions accepted around the outage")
            r = post(d, "core", "echo", {"payload": {"after": True}})  # accepted again once writes succeed
            assert r.status_code == 202, r.text
        finally:
            _stop(d, pg)


def _stop(d: DaemonProcess, pg: PgServer) -> None:
    if not pg.running:
        pg.start()
    d.stop()
