"""Versioned schema migrations of the PostgreSQL read model, run at start under an advisory lock (issue #15).

Why a small runner and not a migration tool: the read model is one disposable table (plus a key/value table)
that `atlas admin rebuild-readmodel` can refill from the log, its migrations are plain SQL, and atlas has no ORM
(Alembic needs SQLAlchemy). What the issue asks of a tool is what this module does: versions recorded in
`schema_migrations`, each applied once in its own transaction, and `pg_advisory_xact_lock` so that daemons starting
together wait for each other instead of racing (the second one finds the versions applied and does nothing).

Text columns use the "C" collation: keyset pages compare (startedAt, sessionId) as bytes, exactly as SQLite
does, so both adapters order and page identically whatever the database's default collation is.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["LOCK_KEY", "MIGRATIONS", "migrate"]

#: The advisory lock key of migrations (an arbitrary constant: "atlas-rm" as a 64-bit number).
LOCK_KEY: Final = 0x61746C61732D726D

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (1, """
CREATE TABLE sessions (
    session_id        text COLLATE "C" PRIMARY KEY,
    workspace_id      text COLLATE "C" NOT NULL,
    correlation_id    text COLLATE "C" NOT NULL,
    job_name          text COLLATE "C" NOT NULL,
    signal_id         text COLLATE "C" NOT NULL,
    parent_session_id text COLLATE "C",
    root_session_id   text COLLATE "C",
    status            text COLLATE "C" NOT NULL,
    started_at        text COLLATE "C" NOT NULL,
    queued_at         text COLLATE "C" NOT NULL,
    last_seq          bigint NOT NULL,
    summary_json      text NOT NULL,
    view_json         text NOT NULL
);
CREATE INDEX idx_sessions_correlation ON sessions (correlation_id, started_at, session_id);
CREATE INDEX idx_sessions_workspace ON sessions (workspace_id, started_at, session_id);
CREATE INDEX idx_sessions_workspace_status ON sessions (workspace_id, status, started_at, session_id);
CREATE INDEX idx_sessions_started ON sessions (started_at, session_id);
CREATE INDEX idx_sessions_parent ON sessions (parent_session_id, queued_at, session_id);
CREATE INDEX idx_sessions_root ON sessions (root_session_id, started_at, session_id);
CREATE INDEX idx_sessions_status ON sessions (status, queued_at, session_id);
CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
"""),
)


def migrate(conn: Any) -> list[int]:
    """Apply the missing migrations on `conn` (a psycopg connection in autocommit mode); returns the versions
    applied by this call. Concurrent callers serialise on the advisory lock, taken inside each transaction."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
