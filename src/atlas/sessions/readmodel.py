"""The SQLite read model: one row per session, for queries the bus cannot answer (spec §7.1, §7.2).

JetStream is the durable truth; this file is a disposable, rebuildable index of it. Each row holds the columns
the API filters on, the latest SessionSummary and SessionView as JSON, and ``lastSeq``. Two properties make it
safe to feed from several sources (write-through of this daemon's own events, and an ordered consumer that
replays everything):

* **Idempotent, monotonic upserts.** A row is only replaced by a view with a higher ``lastSeq``, so applying
  the same or an older event again is a no-op whatever order the sources deliver in.
* **Resumable.** The consumer's stream sequence is stored in the same transaction as the rows it produced, so
  a crash never leaves the two out of step.

Lookups by ``sessionId`` and ``correlationId`` are index searches whose cost does not depend on the number of
stored sessions (spec §7.2; checked by ``EXPLAIN QUERY PLAN`` in the tests and timed by ``bench/``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atlas.jsoncodec import loads, to_json

__all__ = [
    "NON_TERMINAL",
    "STREAM_SEQ_KEY",
    "ReadModel",
    "decode_cursor",
    "encode_cursor",
    "list_query",
    "normalize_timestamp",
    "open_read_model",
]

log = logging.getLogger("atlas.readmodel")

STREAM_SEQ_KEY = "session_events_stream_seq"
"""Meta key of the last SESSION_EVENTS stream sequence applied, where the ordered consumer resumes."""

CLEAN_KEY = "closed_cleanly"
"""Meta key: "0" while a process has the file open, "1" after a clean close."""

CLOSED_SUFFIX = ".closed"
"""Suffix of the file a clean close writes next to the database: the fingerprint of the file it left."""

NON_TERMINAL = ("queued", "active")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id        TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL,
    correlation_id    TEXT NOT NULL,
    job_name          TEXT NOT NULL,
    signal_id         TEXT NOT NULL,
    parent_session_id TEXT,
    root_session_id   TEXT,
    status            TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    queued_at         TEXT NOT NULL,
    last_seq          INTEGER NOT NULL,
    summary_json      TEXT NOT NULL,
    view_json         TEXT NOT NULL
);
-- The correlation, parent and root indexes carry the sort keys too, so a lookup is served in order by the
-- index alone: no sort step, and no temptation for the planner to walk the whole started_at index instead.
CREATE INDEX IF NOT EXISTS idx_sessions_correlation ON sessions (correlation_id, started_at, session_id);
CREATE INDEX IF NOT EXISTS idx_sessions_workspace ON sessions (workspace_id, started_at, session_id);
CREATE INDEX IF NOT EXISTS idx_sessions_started ON sessions (started_at, session_id);
CREATE INDEX IF NOT EXISTS idx_sessions_parent ON sessions (parent_session_id, queued_at);
CREATE INDEX IF NOT EXISTS idx_sessions_root ON sessions (root_session_id, started_at, session_id);
CREATE INDEX IF NOT EXISTS idx_sessions_status ON sessions (status);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = (
    "session_id, workspace_id, correlation_id, job_name, signal_id, parent_session_id, root_session_id, "
    "status, started_at, queued_at, last_seq, summary_json, view_json"
)

# The guard of spec §7.1: a row only moves forward (rowcount is 0 when the WHERE refuses the update).
_SET_LATEST = """
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

# A whole batch in one statement: `INSERT … VALUES (…), (…), …` with every row's parameters. One sqlite3_step per
# statement instead of one per row (executemany) matters on the writer thread: the module takes the GIL back after
# every step, and while the event loop is busy each of those waits up to the interpreter's switch interval (5 ms),
# which capped the read model at a few hundred rows a second under load. Rows go in order, so a later pair for the
# same session is applied after an earlier one.
_ROW_MARKS = "(" + ", ".join("?" * 13) + ")"


def _upsert_rows_sql(n: int) -> str:
    return f"INSERT INTO sessions ({_COLUMNS}) VALUES " + ", ".join([_ROW_MARKS] * n) + _SET_LATEST


# The stream sequence only moves forward too, so a late write-through batch cannot rewind the consumer.
_SET_STREAM_SEQ = """
INSERT INTO meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)
"""

def encode_cursor(started_at: str, session_id: str) -> str:
    """Opaque keyset cursor for the page after (started_at, session_id): clients must not parse it."""
    raw = json.dumps([started_at, session_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """Inverse of :func:`encode_cursor`; ``ValueError`` for anything it did not produce (the API's 400)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(part, str) and part for part in value):
        raise ValueError("invalid cursor")
    return value[0], value[1]


def normalize_timestamp(value: str) -> str:
    """Canonical ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, milliseconds) for an RFC 3339 bound.

    Stored timestamps have exactly that shape, which is what makes comparing them as strings correct; a bound
    in another shape (``...:02Z``, ``+02:00``, microseconds) would compare wrongly. Sub-millisecond parts are
    rounded *up*: no stored timestamp lies strictly between, so ``>= since`` and ``< until`` keep their
    meaning.
    """
    try:
        parsed = datetime.fromisoformat(value.strip().upper())  # RFC 3339 allows a lower-case "t" and "z"
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"invalid timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    parsed = parsed.astimezone(UTC)
    parsed += timedelta(microseconds=-parsed.microsecond % 1000)  # round up to a whole millisecond
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


def _columns(view: dict[str, Any], summary: dict[str, Any]) -> list[Any]:
    """The indexed column values of one session (every column but the two documents); identity comes from the
    summary, falling back to the view."""

    def pick(key: str) -> Any:
        value = summary.get(key)
        return view.get(key) if value is None else value

    session_id = pick("sessionId")
    if not session_id:
        raise ValueError("a session row needs a sessionId")
    queued_at = pick("queuedAt") or ""
    return [
        session_id,
        pick("workspaceId") or "",
        pick("correlationId") or "",
        pick("jobName") or "",
        pick("signalId") or "",
        pick("parentSessionId") or None,
        pick("rootSessionId") or None,
        pick("status") or "queued",
        pick("startedAt") or queued_at,
        queued_at,
        int(view.get("lastSeq") or 0),
    ]


def encode_rows(rows: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
    """A batch of (view, summary) pairs as the flat parameter list `ReadModel.upsert_encoded` takes (13 values a
    row, documents encoded). Raises ValueError for a pair without a sessionId, before anything is written."""
    flat: list[Any] = []
    for view, summary in rows:
        flat += _columns(view, summary)
        flat.append(to_json(summary))
        flat.append(to_json(view))
    return flat


def open_read_model(path: Path) -> ReadModel:
    """The read model at `path`; a file that is not a healthy database is moved aside (to
    `<name>.corrupt-<unix time>`, with its -wal and -shm) and replaced by an empty one, which the materialiser then
    fills from the bus.

    Every start checks the file (`ReadModel` runs `quick_check` unless the file is provably the one a clean close
    left, see `_untouched_since_clean_close`), so damage done while the daemon was stopped — a bad disk, a lost
    write-back after an OS crash, a careless copy — costs a rebuild, never a daemon that cannot start."""
    try:
        return ReadModel(path)
    except sqlite3.DatabaseError as exc:
        suffix = f".corrupt-{int(time.time())}"
        log.warning("read model %s is damaged (%s): moved aside with suffix %s, rebuilding from the bus",
                    path, exc, suffix)
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            old = path.with_name(name)
            if old.exists():
                old.rename(old.with_name(name + suffix))
        return ReadModel(path)


def _closed_marker(path: Path) -> Path:
    """Where a clean close records the fingerprint of the file it left (next to the file, never inside it)."""
    return path.with_name(path.name + CLOSED_SUFFIX)


def _fingerprint(path: Path) -> dict[str, int] | None:
    """What changes whenever anything writes the file: inode, size and modification time (nanoseconds)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtimeNs": st.st_mtime_ns}


def _untouched_since_clean_close(path: Path) -> bool:
    """Whether `path` is byte for byte the file the last clean close synced and fingerprinted.

    The marker is consumed here (the open about to happen changes the file), so it vouches for one start only. A
    missing or unreadable marker, a -wal file left next to the database, or any change to the file since (a write,
    a truncation, a copy, a restore) means the full check runs. Measured on a 1 000 000-session store (1.9 GB):
    `quick_check` takes 1.3-1.5 s with the file in the page cache and 5.9 s from a cold cache, which every clean
    restart of a large store would pay for nothing; this costs two stat calls.
    """
    marker = _closed_marker(path)
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    finally:
        marker.unlink(missing_ok=True)
    if path.with_name(path.name + "-wal").exists():
        return False
    return isinstance(recorded, dict) and recorded == _fingerprint(path)


def _record_clean_close(path: Path) -> None:
    """Sync the closed file and record its fingerprint, so the next start may skip the full integrity check.

    The file is synced first (the read model never fsyncs while running): an OS crash after a clean stop would
    otherwise leave a file whose pages were never written back under a marker that vouches for it. Written
    atomically and 0600 like the database; failing to write it only costs the next start a full check."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fingerprint = _fingerprint(path)
        if fingerprint is None:
            return
        marker = _closed_marker(path)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(fingerprint).encode())
        finally:
            os.close(fd)
        os.replace(tmp, marker)
    except OSError as exc:
        log.warning("read model %s: clean close not recorded (%s); the next start checks the whole file", path, exc)


def list_query(
    mark: str,
    *,
    workspace_id: str | None = None,
    correlation_id: str | None = None,
    job_name: str | None = None,
    signal_id: str | None = None,
    parent_session_id: str | None = None,
    root_session_id: str | None = None,
    statuses: Sequence[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    session_id_prefix: str | None = None,
) -> tuple[str, list[Any]]:
    """The list query of `list_sessions` and its parameters, with `mark` as the placeholder (SQLite's `?`,
    psycopg's `%s`): one text for both adapters, so their filters and keyset pages are the same."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("workspace_id", workspace_id),
        ("correlation_id", correlation_id),
        ("job_name", job_name),
        ("signal_id", signal_id),
        ("parent_session_id", parent_session_id),
        ("root_session_id", root_session_id),
    ):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if session_id_prefix is not None:
        # substr, not LIKE: exact and case-sensitive on SQLite and PostgreSQL alike, with no wildcard to escape
        # (the length is an int, safe in the text).
        where.append(f"substr(session_id, 1, {len(session_id_prefix)}) = {mark}")
        params.append(session_id_prefix)
    if statuses is not None:
        # An empty list matches nothing, like any other filter value no session has.
        where.append(f"status IN ({', '.join([mark] * len(statuses))})" if statuses else "1 = 0")
        params.extend(statuses)
    if since is not None:
        where.append(f"started_at >= {mark}")
        params.append(normalize_timestamp(since))
    if until is not None:
        where.append(f"started_at < {mark}")
        params.append(normalize_timestamp(until))
    if cursor is not None:
        where.append(f"(started_at, session_id) < ({mark}, {mark})")
        params.extend(decode_cursor(cursor))
    sql = "SELECT summary_json, started_at, session_id FROM sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY started_at DESC, session_id DESC LIMIT {mark}"
    params.append(limit + 1)  # one extra row tells whether there is a next page
    return sql, params


class ReadModel:
    """The read model at ``path`` (normally ``$ATLAS_HOME/atlas.db``).

    One connection is shared by the asyncio code and, occasionally, worker threads; a lock serialises every
    use of it, reads included, because a read on a connection with another thread's write transaction open
    would see rows that may yet be rolled back. All statements are short index operations, so the lock is
    held briefly.
    """

    #: Errors worth another try later (a full disk, an I/O error); the store keeps the rows meanwhile.
    transient_errors: tuple[type[Exception], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        untouched = _untouched_since_clean_close(self.path)  # before this open changes the file
        # Create the file ourselves so it is 0600 from the first byte (spec §10 item 9); SQLite gives the
        # -wal and -shm files the same mode as the database.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        self._lock = threading.RLock()
        self._closed = False
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one transaction.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # No fsync at all: a commit is handed to the OS and the loop goes on (a checkpoint's fsync used to stall the
            # event loop for milliseconds and cost half of a trigger's read-model time). A crashed *process* loses
            # nothing; an OS crash or power loss may corrupt the file, which `open_read_model` detects on the next
            # start (a full check unless the file is the one a clean close synced) and rebuilds from the bus.
            self._conn.execute("PRAGMA synchronous=OFF")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA temp_store=MEMORY")
            # 16 MiB of page cache: index pages of a large store stay hot, and the daemon's RSS levels off within a
            # minute of load (a bigger cache reads as slow growth for as long as it takes to fill).
            self._conn.execute("PRAGMA cache_size=-16384")
            # Pages beyond that cache are read through a memory map of the file (up to 4 GiB, a few million sessions)
            # instead of a read() and a copy each: a lookup in a million-session store touches index and table leaves
            # that are not in the cache, and that made it about twice as slow as in a small one (bench/
            # readmodel_lookup.py: p50 ratio 1.7–2.1× without the map, 1.4× with it). Mapped pages belong to the OS page
            # cache (they count in RSS but are dropped under pressure); SQLite writes through the WAL as before, and an
            # I/O error on a mapped page kills the process, which loses nothing (this file is rebuilt from the bus).
            self._conn.execute("PRAGMA mmap_size=4294967296")
            # Rows per multi-row upsert: as many as the build's limit on bound parameters allows, at most 500.
            self._rows_per_statement = max(1, min(500, self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 13))
            with self._lock:
                self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            # Every start: a file the last clean close left untouched is known good; anything else — an unclean
            # stop, or a file written, truncated or replaced while no daemon had it open — is checked in full.
            if not untouched or self.get_meta(CLEAN_KEY) != "1":
                self._check_integrity()
            self.set_meta(CLEAN_KEY, "0")
        except BaseException:
            self._conn.close()
            raise

    def _check_integrity(self) -> None:
        """`PRAGMA quick_check` (every page and index entry, without cross-checking index contents against rows);
        raises DatabaseError for a damaged file, which `open_read_model` moves aside."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        if [row[0] for row in rows] != ["ok"]:
            detail = rows[0][0] if rows else "no answer"
            raise sqlite3.DatabaseError(f"read model failed its integrity check: {detail}")

    # -- plumbing ----

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction under the lock: rolled back on any error."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            else:
                if self._conn.in_transaction:
                    cur.execute("COMMIT")
            finally:
                cur.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection, letting SQLite refresh its planner statistics first. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.set_meta(CLEAN_KEY, "1")
                self._conn.execute("PRAGMA optimize")
            except sqlite3.OperationalError as exc:
                # A full disk at stop: not a reason to fail the stop. Without the flag and the marker the next start
                # checks the whole file, and the bus fills in whatever was not written.
                log.warning("read model %s not marked closed cleanly (%s)", self.path, exc)
                return
            finally:
                self._conn.close()
            _record_clean_close(self.path)

    # -- writes ----

    def upsert(self, view: dict[str, Any], summary: dict[str, Any], stream_seq: int | None = None) -> bool:
        """Store ``view``/``summary`` unless the stored row already has ``lastSeq`` >= the view's.

        Returns whether the row was written. ``stream_seq``, when given, is stored (if higher than the stored
        one) in the same transaction, so the consumer resumes exactly after what was applied.
        """
        return self.upsert_many([(view, summary)], stream_seq) > 0

    def upsert_many(self, rows: Iterable[tuple[dict[str, Any], dict[str, Any]]], stream_seq: int | None = None) -> int:
        """:meth:`upsert` for a batch of (view, summary) pairs in one transaction; returns rows written.

        Batching is what makes replaying a large stream fast: one commit per batch instead of per event.
        Pairs for the same session are applied in order, so the newest view of the batch wins.
        """
        return self.upsert_encoded(encode_rows(rows), stream_seq)

    def upsert_encoded(self, params: list[Any], stream_seq: int | None = None) -> int:
        """:meth:`upsert_many` for a batch already encoded by :func:`encode_rows` (which needs no lock, so the
        store encodes on the event loop and its writer thread runs only this: one statement per chunk of rows)."""
        per = self._rows_per_statement * 13
        with self._write() as cur:
            written = 0
            for start in range(0, len(params), per):
                chunk = params[start:start + per]
                cur.execute(_upsert_rows_sql(len(chunk) // 13), chunk)
                written += max(cur.rowcount, 0)
            if stream_seq is not None:
                cur.execute(_SET_STREAM_SEQ, (STREAM_SEQ_KEY, str(stream_seq)))
        return written

    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` unconditionally (unlike the monotonic stream sequence of :meth:`upsert`)."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def get_stream_seq(self) -> int:
        """The last SESSION_EVENTS stream sequence applied (0 when none): the consumer resumes after it."""
        value = self.get_meta(STREAM_SEQ_KEY)
        return int(value) if value else 0

    # -- single-session reads ----

    def get_view(self, sid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT view_json FROM sessions WHERE session_id = ?", (sid,))
        return loads(rows[0][0]) if rows else None

    def get_summary(self, sid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT summary_json FROM sessions WHERE session_id = ?", (sid,))
        return loads(rows[0][0]) if rows else None

    def get_last_seq(self, sid: str) -> int:
        """``lastSeq`` of the stored view, 0 for an unknown session (the reducer's initial value)."""
        rows = self._query("SELECT last_seq FROM sessions WHERE session_id = ?", (sid,))
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
        """One page of summaries, newest first by (startedAt, sessionId), and the cursor of the next page.

        Filters are AND-ed; ``None`` means "no filter". ``since`` is inclusive and ``until`` exclusive, both
        on ``startedAt``. The cursor is a keyset on the last row returned, so a session appears at most once
        per scan even while new sessions arrive; ``nextCursor`` is None on the last page. ``ValueError`` for a
        bad cursor, timestamp or limit (the API's 400 ``invalid_query``).
        """
        sql, params = list_query(
            "?",
            workspace_id=workspace_id,
            correlation_id=correlation_id,
            job_name=job_name,
            signal_id=signal_id,
            parent_session_id=parent_session_id,
            root_session_id=root_session_id,
            statuses=statuses,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
            session_id_prefix=session_id_prefix,
        )
        rows = self._query(sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1][1], rows[-1][2])
        return [loads(row[0]) for row in rows], next_cursor

    def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        """``EXPLAIN QUERY PLAN`` details for ``sql``: how tests and benches prove a lookup is a SEARCH."""
        return [row[3] for row in self._query("EXPLAIN QUERY PLAN " + sql, params)]

    def explain_get(self) -> list[str]:
        """Query plan of the sessionId lookup used by :meth:`get_view` / :meth:`get_summary`."""
        return self.explain("SELECT view_json FROM sessions WHERE session_id = ?", ("x",))

    def explain_list(self, **filters: Any) -> list[str]:
        """Query plan of :meth:`list_sessions` called with the same keyword arguments."""
        sql, params = list_query("?", **filters)
        return self.explain(sql, params)

    def children(self, parent_id: str) -> list[dict[str, Any]]:
        """Summaries of the direct children of ``parent_id`` in acceptance order (queuedAt, sessionId)."""
        rows = self._query(
            "SELECT summary_json FROM sessions WHERE parent_session_id = ? ORDER BY queued_at, session_id",
            (parent_id,),
        )
        return [loads(row[0]) for row in rows]

    def descendants(self, sid: str) -> list[str]:
        """Session ids of every descendant of ``sid`` (children, grandchildren...), excluding ``sid``.

        Used to cancel a whole subtree (spec §8.3). ``UNION`` rather than ``UNION ALL`` so that a corrupt
        parent cycle terminates instead of recursing forever.
        """
        rows = self._query(
            """
            WITH RECURSIVE tree(id) AS (
                SELECT session_id FROM sessions WHERE parent_session_id = ?
                UNION
                SELECT s.session_id FROM sessions AS s JOIN tree ON s.parent_session_id = tree.id
            )
            SELECT id FROM tree WHERE id != ?
            """,
            (sid, sid),
        )
        return [row[0] for row in rows]

    def non_terminal(self, statuses: Sequence[str] = NON_TERMINAL, *, queued_after: str | None = None,
                     queued_before: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of every session still ``queued`` or ``active`` (or only those of `statuses`, queued in the
        open interval (`queued_after`, `queued_before`), at most `limit`), oldest first (never pruned, §7.3)."""
        marks = ", ".join("?" for _ in statuses)
        where, params = f"status IN ({marks})", list(statuses)
        if queued_after is not None:
            where, params = where + " AND queued_at > ?", [*params, queued_after]
        if queued_before is not None:
            where, params = where + " AND queued_at < ?", [*params, queued_before]
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        rows = self._query(
            f"SELECT summary_json FROM sessions WHERE {where} ORDER BY queued_at, session_id{tail}", params,
        )
        return [loads(row[0]) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Number of stored sessions per status (for health and metrics)."""
        rows = self._query("SELECT status, COUNT(*) FROM sessions GROUP BY status")
        return {status: int(count) for status, count in rows}

    def count_live(self) -> dict[tuple[str, str], int]:
        """Queued and active sessions by (status, workspace): the `atlas_sessions` gauge at each scrape, one
        grouped count over the status index (terminal rows, however many, are not visited)."""
        rows = self._query("SELECT status, workspace_id, COUNT(*) FROM sessions WHERE status IN (?, ?) "
                           "GROUP BY status, workspace_id", NON_TERMINAL)
        return {(status, workspace): int(count) for status, workspace, count in rows}

    def count_correlation(self, correlation_id: str) -> int:
        """Sessions of one correlation tree (for ATLAS_MAX_TREE_SESSIONS); an index count."""
        rows = self._query("SELECT COUNT(*) FROM sessions WHERE correlation_id = ?", (correlation_id,))
        return int(rows[0][0])

    def note_stream_seq(self, stream_seq: int) -> None:
        """Record a consumed stream sequence whose event changed no row (a duplicate), so a restart does not
        replay it again. Monotonic, like the sequence stored by :meth:`upsert`."""
        with self._write() as cur:
            cur.execute(_SET_STREAM_SEQ, (STREAM_SEQ_KEY, str(stream_seq)))

    def prune(self, before: str) -> int:
        """Delete terminal sessions that started before `before` (RFC 3339); non-terminal ones are never pruned
        (spec §7.3). Returns the number of rows removed."""
        with self._write() as cur:
            cur.execute(
                "DELETE FROM sessions WHERE started_at < ? AND status NOT IN (?, ?)",
                (normalize_timestamp(before), *NON_TERMINAL),
            )
            return max(cur.rowcount, 0)
