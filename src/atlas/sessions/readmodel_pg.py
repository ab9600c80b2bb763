"""The PostgreSQL read model (issue #15): the same contract as the SQLite one (`atlas.sessions.readmodel`), for
a database that several daemons share (`ATLAS_DATABASE_URL`).

Same rows, same guard, same queries: one row per session with the filtered columns, the SessionSummary and the
SessionView as compact JSON text and `last_seq`; an upsert only moves a row forward (`WHERE excluded.last_seq >
sessions.last_seq`), so a late or repeated write is a no-op whichever daemon sends it; the list query is the
SQLite adapter's own text (`list_query`) with psycopg's placeholder, over "C"-collated columns, so both adapters
filter and page identically. The schema is versioned (`atlas.sessions.pg_schema`).

The interface is the store's synchronous one: writes run on the store's writer thread, reads on the caller's (a
pooled connection each, so they never wait behind a write transaction). Connection problems raise
`psycopg.OperationalError`, which the store treats like a full disk: the rows stay dirty and are retried.

Reads run on the daemon's event loop, which must never stall for long (a daemon whose heartbeat goes stale has its
sessions interrupted by the others). So a read waits at most `READ_WAIT_S` for a connection, and once the database
has failed, reads fail at once (503) for `DOWN_FOR_S` before one tries again: an outage costs the loop at most one
short wait a second, instead of a pool timeout per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from atlas.errors import AtlasError
from atlas.jsoncodec import loads
from atlas.sessions.pg_schema import migrate
from atlas.sessions.readmodel import (
    NON_TERMINAL,
    STREAM_SEQ_KEY,
    encode_cursor,
    encode_rows,
    list_query,
    normalize_timestamp,
)

__all__ = ["PostgresReadModel"]

log = logging.getLogger("atlas.readmodel.pg")

_COLUMNS: Final = (
    "session_id, workspace_id, correlation_id, job_name, signal_id, parent_session_id, root_session_id, "
    "status, started_at, queued_at, last_seq, summary_json, view_json"
)
_WIDTH: Final = 13
#: The longest one reconnection attempt of the pool keeps backing off before starting over at one second.
RECONNECT_TIMEOUT_S: Final = 4.0
_ROWS_PER_STATEMENT: Final = 500
#: The longest a read (on the event loop) waits for a pooled connection.
READ_WAIT_S: Final = 0.5
#: After a failure, reads fail at once for this long before one tries the database again.
DOWN_FOR_S: Final = 1.0
_SET_LATEST: Final = """
ON CONFLICT (session_id) DO UPDATE SET
    workspace_id = excluded.workspace_id,
    correlation_id = excluded.correlation_id,
    job_name = excluded.job_name,
    signal_id = excluded.signal_id,
    parent_session_id = excluded.parent_session_id,
    root_session_id = excluded.root_session_id,
    status = excluded.status,
    started_at = excluded.started_at,
    queued_at = excluded.queued_at,
    last_seq = excluded.last_seq,
    summary_json = excluded.summary_json,
    view_json = excluded.view_json
WHERE excluded.last_seq > sessions.last_seq
"""
_SET_STREAM_SEQ: Final = """
INSERT INTO meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
WHERE CAST(excluded.value AS bigint) > CAST(meta.value AS bigint)
"""


#: Batches of fewer rows are one `VALUES` statement, 13 placeholders a row; larger ones pass each column as one
#: binary array to `unnest`, a statement of fixed text whatever the batch. psycopg caches how it parses a statement
#: only up to 50 parameters, so from 4 rows on a `VALUES` statement is parsed again on every write, at a client cost
#: per row that `unnest` cuts to 0.4–0.6× at 8 rows and 0.2× at 64; but PostgreSQL spends 10–25 % more per row on
#: a small `unnest`, and one database serves every daemon, so below 8 rows `VALUES` stays (bench/pg_upsert.py).
_UNNEST_FROM: Final = 8
_UPSERT_UNNEST: Final = f"""
INSERT INTO sessions ({_COLUMNS})
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                     %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[])
""" + _SET_LATEST


def _upsert_values_sql(rows: int) -> str:
    marks = "(" + ", ".join(["%s"] * _WIDTH) + ")"
    return f"INSERT INTO sessions ({_COLUMNS}) VALUES " + ", ".join([marks] * rows) + _SET_LATEST


_UPSERT_VALUES: Final = {rows: _upsert_values_sql(rows) for rows in range(1, _UNNEST_FROM)}


def _upsert_statement(chunk: list[Any]) -> tuple[str, list[Any]]:
    """The statement writing the rows of `chunk` (flat, `_WIDTH` values a row, sessionId order) and its
    parameters: a `VALUES` list for a few rows, one array per column for more (see `_UNNEST_FROM`)."""
    rows = len(chunk) // _WIDTH
    if rows < _UNNEST_FROM:
        return _UPSERT_VALUES[rows], chunk
    return _UPSERT_UNNEST, [chunk[column::_WIDTH] for column in range(_WIDTH)]


def _newest_per_session(params: list[Any]) -> list[Any]:
    """The batch with one row per session, the one the guard would keep: the highest `last_seq`, the earliest of
    equal ones. PostgreSQL refuses a statement that updates one row twice; SQLite applied the pairs in order, which
    the guard makes equivalent to this.

    Rows go in sessionId order: several daemons upserting overlapping rows then lock them in the same order, so
    their batches wait for each other instead of deadlocking (a 3-daemon benchmark saw deadlocks, each of which
    the store took for a database outage and answered new triggers with 503 for a second)."""
    best: dict[str, list[Any]] = {}
    for start in range(0, len(params), _WIDTH):
        row = params[start:start + _WIDTH]
        kept = best.get(row[0])
        if kept is None or row[10] > kept[10]:
            best[row[0]] = row
    return [value for sid in sorted(best) for value in best[sid]]


class PostgresReadModel:
    """The read model in the database at `dsn` (a `postgresql://` URL); migrates the schema when opened."""

    #: Errors worth another try later (the server is down or restarting); the store keeps the rows meanwhile.
    transient_errors: tuple[type[Exception], ...] = (psycopg.OperationalError,)

    def __init__(self, dsn: str, *, pool_size: int = 4, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.path = None  # no file: the SQLite adapter's damage checks do not apply
        # A request waits at most `connect_timeout` for a connection: a database that is down fails reads with 503
        # and writes with an error the store retries, instead of holding the caller for the pool's default 30 s.
        # `reconnect_timeout` bounds the pool's doubling backoff between reconnection attempts: after an outage of
        # a few seconds, the default (5 minutes) let the delay grow so long that the daemon stayed refused for tens
        # of seconds after the database was back.
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max(2, pool_size), open=False, timeout=connect_timeout,
                                    kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
                                    reconnect_timeout=RECONNECT_TIMEOUT_S, name="atlas-readmodel")
        self._pool.open(wait=True, timeout=connect_timeout)
        try:
            with self._pool.connection() as conn:
                applied = migrate(conn)
            if applied:
                log.info("read model schema migrated to version %d", applied[-1])
        except BaseException:
            self._pool.close()
            raise
        self._closed = False
        self._down_until = 0.0  # monotonic time before which reads fail at once (the database failed)

    @contextmanager
    def _conn(self) -> Any:
        with self._pool.connection() as conn:
            yield conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read; a database that cannot be reached is the API's 503 `read_model_unavailable` (at once while it
        is known to be down, see the module's docstring)."""
        if time.monotonic() < self._down_until:
            raise AtlasError("read_model_unavailable", "The PostgreSQL read model cannot be reached",
                             {"reason": "down"})
        try:
            with self._pool.connection(timeout=READ_WAIT_S) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.OperationalError as exc:
            self._failed()
            raise AtlasError("read_model_unavailable", "The PostgreSQL read model cannot be reached",
                             {"reason": type(exc).__name__}) from exc

    def _failed(self) -> None:
        self._down_until = time.monotonic() + DOWN_FOR_S

    @property
    def available(self) -> bool:
        """False while the database is known to be down (a read or write failed within `DOWN_FOR_S`)."""
        return time.monotonic() >= self._down_until

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    # -- writes ----

    def upsert(self, view: dict[str, Any], summary: dict[str, Any], stream_seq: int | None = None) -> bool:
        return self.upsert_many([(view, summary)], stream_seq) > 0

    def upsert_many(self, rows: Iterable[tuple[dict[str, Any], dict[str, Any]]], stream_seq: int | None = None) -> int:
        return self.upsert_encoded(encode_rows(rows), stream_seq)

    def upsert_encoded(self, params: list[Any], stream_seq: int | None = None) -> int:
        """The rows (at most 500 a statement) and the stream sequence, atomically; returns rows written.

        A batch of up to 500 rows is one statement, the stream sequence riding along in a data-modifying `WITH`:
        one round trip, atomic without BEGIN/COMMIT. Round trips matter more than they seem: this runs on the
        store's writer thread, which must take the GIL back from a busy event loop after each one (up to the
        interpreter's 5 ms switch interval); three of them per batch made an accept wait ~20 ms for its commit.
        """
        params = _newest_per_session(params)
        for attempt in range(3):
            try:
                return self._upsert(params, stream_seq)
            except (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected):  # just retry
                if attempt == 2:
                    raise
            except psycopg.OperationalError:
                self._failed()
                raise
        raise AssertionError("unreachable")

    def _upsert(self, params: list[Any], stream_seq: int | None) -> int:
        per = _ROWS_PER_STATEMENT * _WIDTH
        chunks = [params[start:start + per] for start in range(0, len(params), per)] or [[]]
        written = 0
        with self._conn() as conn, (conn.transaction() if len(chunks) > 1 else nullcontext()):
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                if not chunk:
                    if stream_seq is not None:
                        conn.execute(_SET_STREAM_SEQ, (STREAM_SEQ_KEY, str(stream_seq)))
                    continue
                sql, values = _upsert_statement(chunk)
                if last and stream_seq is not None:
                    sql = f"WITH seq AS ({_SET_STREAM_SEQ.strip()}) {sql}"
                    values = [STREAM_SEQ_KEY, str(stream_seq), *values]
                cur = conn.execute(sql, values)
                written += max(cur.rowcount, 0)
        return written

    def set_meta(self, key: str, value: str) -> None:
        with self._conn() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def get_stream_seq(self) -> int:
        value = self.get_meta(STREAM_SEQ_KEY)
        return int(value) if value else 0

    def note_stream_seq(self, stream_seq: int) -> None:
        with self._conn() as conn:
            conn.execute(_SET_STREAM_SEQ, (STREAM_SEQ_KEY, str(stream_seq)))

    # -- single-session reads ----

    def get_view(self, sid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT view_json FROM sessions WHERE session_id = %s", (sid,))
        return loads(rows[0][0]) if rows else None

    def get_summary(self, sid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT summary_json FROM sessions WHERE session_id = %s", (sid,))
        return loads(rows[0][0]) if rows else None

    def get_last_seq(self, sid: str) -> int:
        rows = self._query("SELECT last_seq FROM sessions WHERE session_id = %s", (sid,))
        return int(rows[0][0]) if rows else 0

    # -- lists ----

    def list_sessions(
        self,
        *,
        workspace_id: str | None = None,
        correlation_id: str | None = None,
        job_name: str | None = None,
        signal_id: str | None = None,
        parent_session_id: str | None = None,
        root_session_id: str | None = None,
        statuses: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        session_id_prefix: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of summaries, newest first; the SQLite adapter's filters, cursor and errors exactly."""
        sql, params = list_query(
            "%s", workspace_id=workspace_id, correlation_id=correlation_id, job_name=job_name, signal_id=signal_id,
            parent_session_id=parent_session_id, root_session_id=root_session_id, statuses=statuses, since=since,
            until=until, limit=limit, cursor=cursor, session_id_prefix=session_id_prefix,
        )
        rows = self._query(sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1][1], rows[-1][2])
        return [loads(row[0]) for row in rows], next_cursor

    def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        """`EXPLAIN` lines for `sql` (tests check that lookups are index scans)."""
        return [row[0] for row in self._query("EXPLAIN " + sql, params)]

    def explain_get(self) -> list[str]:
        return self.explain("SELECT view_json FROM sessions WHERE session_id = %s", ("x",))

    def explain_list(self, **filters: Any) -> list[str]:
        sql, params = list_query("%s", **filters)
        return self.explain(sql, params)

    def children(self, parent_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT summary_json FROM sessions WHERE parent_session_id = %s "
                           "ORDER BY queued_at, session_id", (parent_id,))
        return [loads(row[0]) for row in rows]

    def descendants(self, sid: str) -> list[str]:
        rows = self._query(
            """
            WITH RECURSIVE tree(id) AS (
                SELECT session_id FROM sessions WHERE parent_session_id = %s
                UNION
                SELECT s.session_id FROM sessions AS s JOIN tree ON s.parent_session_id = tree.id
            )
            SELECT id FROM tree WHERE id != %s
            """,
            (sid, sid),
        )
        return [row[0] for row in rows]

    def non_terminal(self, statuses: Sequence[str] = NON_TERMINAL, *, queued_after: str | None = None,
                     queued_before: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where = "status = ANY(%s)"
        params: list[Any] = [list(statuses)]
        if queued_after is not None:
            where, params = where + " AND queued_at > %s", [*params, queued_after]
        if queued_before is not None:
            where, params = where + " AND queued_at < %s", [*params, queued_before]
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        rows = self._query(f"SELECT summary_json FROM sessions WHERE {where} ORDER BY queued_at, session_id{tail}",
                           params)
        return [loads(row[0]) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM sessions GROUP BY status")
        return {status: int(count) for status, count in rows}

    def count_live(self) -> dict[tuple[str, str], int]:
        """Queued and active sessions by (status, workspace), for the `atlas_sessions` gauge (status index)."""
        rows = self._query("SELECT status, workspace_id, COUNT(*) FROM sessions WHERE status IN (%s, %s) "
                           "GROUP BY status, workspace_id", NON_TERMINAL)
        return {(status, workspace): int(count) for status, workspace, count in rows}

    def count_correlation(self, correlation_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM sessions WHERE correlation_id = %s", (correlation_id,))
        return int(rows[0][0])

    def prune(self, before: str) -> int:
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE started_at < %s AND status <> ALL(%s)",
                               (normalize_timestamp(before), list(NON_TERMINAL)))
            return max(cur.rowcount, 0)
