"""The private PostgreSQL server of the tests (tests/pg.py): the version we target, one fresh database per test,
data kept across a stop and a crash, nothing left behind, and a missing installation failing (never skipping)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.daemon_proc import ROOT
from tests.pg import PgServer, PgUnavailable, pg_bindir, pg_server


def test_server_is_postgresql_15(pg: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        version = conn.execute("select version()").fetchone()
        number = conn.execute("show server_version_num").fetchone()
        encoding = conn.execute("show server_encoding").fetchone()
    assert version is not None and version[0].startswith("PostgreSQL 15."), version
    assert number is not None and int(number[0]) // 10000 == 15
    assert encoding == ("UTF8",)
    assert pg_dsn.startswith(f"postgresql://postgres@127.0.0.1:{pg.port}/")


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_fresh_database(pg_dsn: str, turn: int) -> None:
    """Both turns create the same table: whichever runs second would fail if the database were shared."""
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
        assert tables == []
        conn.execute("create table marker (turn int)")
        conn.execute("insert into marker values (%s)", (turn,))


def test_databases_of_one_server_are_isolated(pg: PgServer, pg_dsn: str) -> None:
    other = pg.create_database()
    assert other != pg_dsn
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("create table only_here (x int)")
    with psycopg.connect(other) as conn:
        found = conn.execute("select to_regclass('public.only_here')").fetchone()
    assert found == (None,)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_and_start_keep_the_data_and_the_address(mode: str) -> None:
    """The fault tests stop the server under load and start it again: committed rows and the DSN must survive."""
    with pg_server() as server:
        dsn = server.create_database("keep")
        with psycopg.connect(dsn) as conn:
            conn.execute("create table kept (x int)")
            conn.execute("insert into kept values (42)")
        server.stop(mode)
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=5).close()
        server.start()
        assert server.dsn("keep") == dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select x from kept").fetchall() == [(42,)]


def test_close_stops_the_server_and_removes_its_directory() -> None:
    with pg_server() as server:
        base, dsn = server.base, server.dsn()
        assert (server.datadir / "PG_VERSION").read_text().strip() == "15"
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_missing_binaries_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PG_BINDIR", str(tmp_path))
    with pytest.raises(PgUnavailable, match="make postgres"):
        pg_bindir()


def test_missing_binaries_fail_the_pg_tests_rather_than_skip_them(tmp_path: Path) -> None:
    """A pytest run without PostgreSQL must go red with the fix in its output: no skipped tests in this project."""
    env = {**os.environ, "ATLAS_PG_BINDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
         "tests/test_pg_fixture.py::test_server_is_postgresql_15"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert "make postgres" in done.stdout, done.stdout
    assert "ERROR tests/test_pg_fixture.py::test_server_is_postgresql_15" in done.stdout, done.stdout
    assert "SKIPPED" not in done.stdout, done.stdout
