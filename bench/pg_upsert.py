"""Client and server CPU of one read-model write to PostgreSQL, by batch size: the adapter's statement against a
`VALUES` list of every row (issue #15).

Usage: python bench/pg_upsert.py [--batches 300] [--sizes 1,2,3,4,8,16,64]

A private PostgreSQL 15 server (``tests/pg.py``), the read model's schema (``atlas.sessions.pg_schema``), and for
each batch size ``--batches`` batches of fresh sessions (a view with quotes, backslashes and nested results, as the
reducer makes them) written on one autocommit connection, alternately:

- **values**: one ``INSERT … VALUES (…), (…) … ON CONFLICT`` with 13 placeholders a row — what the adapter sent for
  every batch before the eleventh session. psycopg parses a statement's text again on every call once it has more
  than 50 parameters (4 rows or more), and the text grows with the rows.
- **adapter**: what ``PostgresReadModel`` sends now (``readmodel_pg._upsert_statement``): the same ``VALUES``
  statement below ``_UNNEST_FROM`` (8) rows, one binary array per column into ``unnest`` from there on (a statement
  of fixed text).

Client CPU is this process's (``time.process_time``); server CPU is the backend's (``/proc/<pid>/stat``, 10 ms
ticks: coarse for small batches). Nothing asserts a number.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.trigger_throughput import cpu_seconds  # noqa: E402
from tests.pg import start_pg_server  # noqa: E402

from atlas.sessions import readmodel_pg  # noqa: E402
from atlas.sessions.pg_schema import migrate  # noqa: E402
from atlas.sessions.readmodel import encode_rows  # noqa: E402


def say(msg: str) -> None:
    print(f"[pg_upsert] {msg}", file=sys.stderr, flush=True)


def batch(rows: int) -> list[Any]:
    """`rows` fresh sessions as the flat parameter list the adapter writes (newest per session, sessionId order)."""
    pairs = []
    for _ in range(rows):
        sid = str(uuid.uuid4())
        view = {"sessionId": sid, "workspaceId": "cluster", "correlationId": str(uuid.uuid4()), "jobName": "echo",
                "signalId": "echo", "status": "active", "queuedAt": "2026-12-05T10:00:00.000Z",
                "startedAt": "2026-12-05T10:00:00.001Z", "lastSeq": 2,
                "results": {"echo": {"n": 1, "text": 'a "quoted" \\ back\\slash'}}, "steps": [{"stepId": "s1"}] * 3}
        pairs.append((view, {"sessionId": sid, "status": "active", "lastSeq": 2}))
    return readmodel_pg._newest_per_session(encode_rows(pairs))


def values_statement(chunk: list[Any]) -> tuple[str, list[Any]]:
    return readmodel_pg._upsert_values_sql(len(chunk) // readmodel_pg._WIDTH), chunk


def measure(conn: psycopg.Connection[Any], backend: int, batches: list[list[Any]],
            statement: Callable[[list[Any]], tuple[str, list[Any]]]) -> tuple[float, float]:
    """(client, server) CPU seconds to write `batches` with `statement`."""
    c0, s0 = time.process_time(), cpu_seconds(backend)
    for chunk in batches:
        sql, params = statement(chunk)
        conn.execute(sql, params)
    return time.process_time() - c0, cpu_seconds(backend) - s0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=300, help="batches per size and variant")
    parser.add_argument("--sizes", default="1,2,3,4,8,16,64", help="rows per batch, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print("## Read-model writes to PostgreSQL: CPU per row by batch size\n")
    print(f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; load average at start "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; {args.batches} batches per size and variant, "
          "two passes each (values, adapter, values, adapter); µs of CPU per row.\n")
    print("| rows a batch | client: values | client: adapter | adapter / values | server: values | server: adapter |")
    print("|---|---|---|---|---|---|")
    pg = start_pg_server()
    try:
        with psycopg.connect(pg.create_database("bench"), autocommit=True) as conn:
            migrate(conn)
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            backend = int(row[0])
            for rows in sizes:
                totals = {"values": [0.0, 0.0], "adapter": [0.0, 0.0]}
                for name in ("values", "adapter", "values", "adapter"):
                    statement = values_statement if name == "values" else readmodel_pg._upsert_statement
                    client, server = measure(conn, backend, [batch(rows) for _ in range(args.batches)], statement)
                    totals[name][0] += client
                    totals[name][1] += server
                per = 1e6 / (2 * args.batches * rows)
                (vc, vs), (ac, as_) = totals["values"], totals["adapter"]
                print(f"| {rows} | {vc * per:.1f} | {ac * per:.1f} | **{ac / vc:.2f}×** | {vs * per:.1f} "
                      f"| {as_ * per:.1f} |")
                say(f"{rows} rows a batch done")
    finally:
        pg.close()
    print(f"\nBelow {readmodel_pg._UNNEST_FROM} rows the adapter sends the `values` statement itself (those rows "
          "differ only by noise).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
