"""The read model (spec §7.1, §7.2; checklist items 42 and 43) and its two adapters (issue #15).

The contract tests take the `rm` fixture and run twice: on SQLite (`ReadModel`, a file under the test's tmp dir) and
on PostgreSQL (`PostgresReadModel`, a fresh database on the session's private server, tests/pg.py), so both adapters
store, guard, filter and page identically. Tests about the file itself (modes, WAL, damage, reopening) build their
own SQLite model; the query-plan tests have one large table per adapter.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atlas.sessions import readmodel_pg
from atlas.sessions.pg_schema import MIGRATIONS
from atlas.sessions.readmodel import (
    STREAM_SEQ_KEY,
    ReadModel,
    decode_cursor,
    encode_cursor,
    encode_rows,
    normalize_timestamp,
    open_read_model,
)
from atlas.sessions.readmodel_pg import PostgresReadModel
from tests.pg import PgServer

Model = ReadModel | PostgresReadModel
"""Either adapter: what the contract tests hold to."""

STATUSES = ["queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted"]


def ts(second: int, millis: int = 0) -> str:
    """An RFC 3339 timestamp in the stored shape, ``second`` seconds after a fixed origin."""
    minute, sec = divmod(second, 60)
    hour, minute = divmod(minute, 60)
    return f"2026-11-24T{10 + hour:02d}:{minute:02d}:{sec:02d}.{millis:03d}Z"


def session(
    sid: str,
    *,
    seq: int = 1,
    status: str = "queued",
    started_at: str | None = None,
    queued_at: str | None = None,
    workspace_id: str = "demo",
    job_name: str = "job",
    signal_id: str = "sig",
    correlation_id: str | None = None,
    parent: str | None = None,
    root: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A (view, summary) pair as the reducer would produce it."""
    queued_at = queued_at or started_at or ts(0)
    summary: dict[str, Any] = {
        "sessionId": sid,
        "workspaceId": workspace_id,
        "jobName": job_name,
        "task": job_name,
        "status": status,
        "startedAt": started_at or queued_at,
        "stepCount": 0,
        "agentNames": [],
        "correlationId": correlation_id or f"corr-{sid}",
        "signalId": signal_id,
        "trigger": "cascade" if parent else "http",
        "rootSessionId": root or sid,
        "depth": 1 if parent else 0,
        "queuedAt": queued_at,
    }
    if parent:
        summary["parentSessionId"] = parent
    view = {**summary, "agentBlocks": [], "payload": {}, "lastSeq": seq}
    del view["stepCount"], view["agentNames"]
    return view, summary


@pytest.fixture(params=["sqlite", "postgres"])
def rm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Model]:
    """Each adapter in turn, empty; PostgreSQL only costs a database (the server is started once, on first use)."""
    model: Model
    if request.param == "sqlite":
        model = ReadModel(tmp_path / "atlas.db")
    else:
        model = PostgresReadModel(request.getfixturevalue("pg_dsn"))
    try:
        yield model
    finally:
        model.close()


@pytest.fixture
def sqlite_rm(tmp_path: Path) -> Iterator[ReadModel]:
    """The SQLite adapter alone, for what only a file has."""
    model = ReadModel(tmp_path / "atlas.db")
    try:
        yield model
    finally:
        model.close()


def stored_documents(rm: Model, sid: str) -> tuple[str, str]:
    """The stored (view_json, summary_json) text of one row, read past the adapter."""
    sql = "SELECT view_json, summary_json FROM sessions WHERE session_id = "
    if isinstance(rm, ReadModel):
        row = rm._conn.execute(sql + "?", (sid,)).fetchone()
    else:
        with psycopg.connect(rm.dsn) as conn:
            row = conn.execute(sql + "%s", (sid,)).fetchone()
    assert row is not None, sid
    return row[0], row[1]


def pairs_or_rows(rm: Model, *, pairs: int, rows: int) -> int:
    """What `upsert_many` counts as written, which the adapters do not agree on when a batch holds several pairs
    of one session: SQLite applies every pair in order and counts each one the guard let through; PostgreSQL
    refuses to update a row twice in one statement, so its adapter keeps the newest pair of each session and
    counts rows changed. The stored rows are the same either way (the other assertions), and the store ignores the
    count."""
    return pairs if isinstance(rm, ReadModel) else rows


def all_pages(rm: Model, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = rm.list_sessions(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        assert page or not ids, "a page after a non-empty one must not be empty"
        ids.extend(s["sessionId"] for s in page)
        if cursor is None:
            return ids


# -- writes ----


def test_upsert_is_guarded_by_last_seq(rm: Model) -> None:
    assert rm.upsert(*session("s1", seq=1, status="queued"))
    assert not rm.upsert(*session("s1", seq=1, status="queued")), "the same event twice is a no-op"
    assert rm.upsert(*session("s1", seq=3, status="active"))
    assert not rm.upsert(*session("s1", seq=2, status="completed")), "an older view never wins"
    assert rm.get_last_seq("s1") == 3
    assert rm.get_summary("s1") == session("s1", seq=3, status="active")[1]
    assert rm.get_view("s1") == session("s1", seq=3, status="active")[0]
    assert rm.upsert(*session("s1", seq=4, status="completed"))
    summary = rm.get_summary("s1")
    assert summary is not None and summary["status"] == "completed"


def test_unknown_session_reads(rm: Model) -> None:
    assert rm.get_view("nope") is None
    assert rm.get_summary("nope") is None
    assert rm.get_last_seq("nope") == 0


def test_stream_seq_is_stored_with_the_rows_and_only_moves_forward(rm: Model) -> None:
    assert rm.get_stream_seq() == 0
    rm.upsert(*session("a"), stream_seq=10)
    assert rm.get_stream_seq() == 10
    # Even when the row itself is a no-op, the consumer has consumed the message.
    assert not rm.upsert(*session("a"), stream_seq=11)
    assert rm.get_stream_seq() == 11
    rm.upsert(*session("b"), stream_seq=5)
    assert rm.get_stream_seq() == 11
    rm.note_stream_seq(12)
    rm.note_stream_seq(4)
    assert rm.get_stream_seq() == 12
    assert rm.get_meta(STREAM_SEQ_KEY) == "12"
    rm.set_meta(STREAM_SEQ_KEY, "3")  # an explicit reset is allowed
    assert rm.get_stream_seq() == 3
    rm.set_meta("other", "x")
    assert rm.get_meta("other") == "x"
    assert rm.get_meta("missing") is None


def test_upsert_many_applies_a_batch_in_order(rm: Model) -> None:
    rm.upsert(*session("old", seq=5, status="active"))
    written = rm.upsert_many(
        [
            session("a", seq=1),
            session("a", seq=2, status="active"),
            session("b", seq=1),
            session("old", seq=4, status="failed"),  # stale: ignored
        ],
        stream_seq=42,
    )
    assert written == pairs_or_rows(rm, pairs=3, rows=2)
    assert rm.get_last_seq("a") == 2
    assert (rm.get_summary("a") or {})["status"] == "active"
    assert (rm.get_summary("old") or {})["status"] == "active"
    assert rm.get_stream_seq() == 42


def test_a_batch_larger_than_one_statement_is_split_and_stays_in_order(
    rm: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches go in as multi-row statements; across the chunk boundaries rows still apply in order."""
    if isinstance(rm, ReadModel):
        rm._rows_per_statement = 2
    else:
        monkeypatch.setattr(readmodel_pg, "_ROWS_PER_STATEMENT", 2)
    rows = [session("a", seq=1), session("b", seq=1), session("a", seq=2, status="active"),
            session("c", seq=1), session("a", seq=3, status="completed")]
    assert rm.upsert_many(rows, stream_seq=5) == pairs_or_rows(rm, pairs=5, rows=3)
    assert (rm.get_summary("a") or {})["status"] == "completed" and rm.get_last_seq("a") == 3
    assert rm.get_view("b") is not None and rm.get_view("c") is not None
    assert rm.get_stream_seq() == 5


@pytest.mark.parametrize("size", [1, 3, 4, 7, 8, 1200])
def test_batches_of_any_size_store_every_row_exactly_and_keep_the_guard(rm: Model, size: int) -> None:
    """PostgreSQL writes a few rows as one `VALUES` statement and more as one array per column (`unnest`): either
    way every column and document lands as given (NULLs, quotes, backslashes, non-ASCII text), a stale row in a
    batch is ignored, a newer one wins, and the stream sequence rides along."""
    def pair(n: int, seq: int, status: str) -> tuple[dict[str, Any], dict[str, Any]]:
        view, summary = session(f"s{n:05d}", seq=seq, status=status, parent=f"s{n - 1:05d}" if n % 2 else None,
                                root="s00000" if n % 3 else None)
        view["results"] = {"say": f'"quoted" \\ back\\slash {{braces}} ünïcödé 😀 {n}', "n": n}
        return view, summary

    first = [pair(n, 2, "active") for n in range(size)]
    rm.upsert_many(first, stream_seq=100 + size)
    assert rm.get_stream_seq() == 100 + size
    second = [pair(n, 1 if n % 2 else 3, "completed") for n in range(size)]  # odd rows stale, even rows newer
    rm.upsert_many(second, stream_seq=200 + size)
    assert rm.get_stream_seq() == 200 + size
    for n in range(size):
        want_view, want_summary = (second if n % 2 == 0 else first)[n]
        sid = want_view["sessionId"]
        assert rm.get_view(sid) == want_view
        assert rm.get_summary(sid) == want_summary
        assert rm.get_last_seq(sid) == (3 if n % 2 == 0 else 2)
    assert len(all_pages(rm, 500, statuses=["completed"])) == (size + 1) // 2


def test_a_large_batch_with_a_column_null_in_every_row(rm: Model) -> None:
    """Root sessions have no parent: a batch written as arrays (`unnest`) whose parent column is NULL in every row
    still stores them, and lineage queries find nothing under them."""
    rows = [session(f"root{n:02d}", seq=2, status="active") for n in range(12)]
    assert all(view.get("parentSessionId") is None for view, _ in rows)
    rm.upsert_many(rows, stream_seq=9)
    for view, summary in rows:
        assert rm.get_view(view["sessionId"]) == view and rm.get_summary(view["sessionId"]) == summary
    assert rm.children("root00") == [] and rm.get_stream_seq() == 9


def test_stored_documents_are_the_compact_json_of_the_view_and_summary(rm: Model) -> None:
    view, summary = session("u", seq=1)
    view["payload"] = {"text": "é\u2028\n\"\\ \u0001 😀", "big": 12345678901234567890, "f": 1e-7}
    rm.upsert_many([(view, summary)])
    stored = stored_documents(rm, "u")
    assert json.loads(stored[0]) == view
    assert '"text":"é' in stored[0] and ", " not in stored[0] and '": ' not in stored[0]  # compact, UTF-8 as is
    assert json.loads(stored[1]) == summary


def test_a_failed_batch_writes_nothing(rm: Model) -> None:
    bad_view, bad_summary = session("x")
    del bad_view["sessionId"], bad_summary["sessionId"]
    with pytest.raises(ValueError):
        rm.upsert_many([session("ok"), (bad_view, bad_summary)], stream_seq=7)
    assert rm.get_view("ok") is None
    assert rm.get_stream_seq() == 0


def test_survives_reopening(tmp_path: Path) -> None:
    first = ReadModel(tmp_path / "atlas.db")
    first.upsert(*session("s1", seq=2), stream_seq=9)
    first.close()
    first.close()  # idempotent
    second = ReadModel(tmp_path / "atlas.db")
    try:
        assert second.get_last_seq("s1") == 2
        assert second.get_stream_seq() == 9
    finally:
        second.close()


def test_an_unclean_stop_is_checked_and_a_healthy_file_kept(tmp_path: Path) -> None:
    first = ReadModel(tmp_path / "atlas.db")
    first.upsert(*session("s1", seq=2), stream_seq=9)
    # No close(): like a daemon killed with -9. The next open runs quick_check, finds the file healthy, keeps it.
    first._conn.close()
    second = open_read_model(tmp_path / "atlas.db")
    try:
        assert second.get_last_seq("s1") == 2 and second.get_stream_seq() == 9
        assert not list(tmp_path.glob("*.corrupt-*"))
    finally:
        second.close()


def test_a_damaged_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "atlas.db"
    first = ReadModel(path)
    for i in range(200):
        first.upsert(*session(f"s{i}", seq=1))
    first.close()
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the first is garbage: what a lost write-back leaves
    path.write_bytes(bytes(data))
    rm = open_read_model(path)
    try:
        assert rm.get_view("s1") is None and rm.get_stream_seq() == 0  # empty: the bus will refill it
        rm.upsert(*session("new", seq=1))
        assert rm.get_last_seq("new") == 1
        assert len(list(tmp_path.glob("atlas.db.corrupt-*"))) == 1
    finally:
        rm.close()


def test_concurrent_writers_from_threads(rm: Model) -> None:
    def write(worker: int) -> None:
        for i in range(200):
            rm.upsert(*session(f"w{worker}-{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rm.count_by_status() == {"queued": 800}


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / "atlas.db"
    model = ReadModel(path)
    try:
        model.upsert(*session("s1"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        model.close()


def test_database_is_in_wal_mode(sqlite_rm: ReadModel) -> None:
    # WAL is a property of the file, so another connection sees it.
    other = sqlite3.connect(sqlite_rm.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


# -- filters and paging ----


def fixed_set() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """~250 sessions with heavy ties in startedAt and every filter column varied."""
    rng = random.Random(42)
    rows = []
    for i in range(250):
        started = ts(rng.randrange(40), rng.choice([0, 0, 500]))  # many exact ties
        rows.append(
            session(
                f"s{i:03d}-{rng.randrange(10**6):06d}",
                seq=rng.randrange(1, 5),
                status=rng.choice(STATUSES),
                started_at=started,
                workspace_id=rng.choice(["demo", "reports", "other"]),
                job_name=rng.choice(["count", "stamp"]),
                signal_id=rng.choice(["go", "tick"]),
                correlation_id=f"corr-{rng.randrange(30)}",
                root=f"root-{rng.randrange(5)}",
                parent=rng.choice([None, None, "p-1", "p-2"]),
            )
        )
    return rows


def expected(rows: list[tuple[dict[str, Any], dict[str, Any]]], **filters: Any) -> list[str]:
    keys = {
        "workspace_id": "workspaceId",
        "correlation_id": "correlationId",
        "job_name": "jobName",
        "signal_id": "signalId",
        "parent_session_id": "parentSessionId",
        "root_session_id": "rootSessionId",
    }
    matches = []
    for _, summary in rows:
        ok = all(summary.get(keys[k]) == v for k, v in filters.items() if k in keys)
        if "statuses" in filters:
            ok = ok and summary["status"] in filters["statuses"]
        if "since" in filters:
            ok = ok and summary["startedAt"] >= filters["since"]
        if "until" in filters:
            ok = ok and summary["startedAt"] < filters["until"]
        if ok:
            matches.append(summary)
    matches.sort(key=lambda s: (s["startedAt"], s["sessionId"]), reverse=True)
    return [s["sessionId"] for s in matches]


@pytest.fixture
def loaded(rm: Model) -> tuple[Model, list[tuple[dict[str, Any], dict[str, Any]]]]:
    rows = fixed_set()
    rm.upsert_many(rows)
    return rm, rows


FILTER_CASES: list[dict[str, Any]] = [
    {},
    {"workspace_id": "demo"},
    {"workspace_id": "demo", "job_name": "count"},
    {"workspace_id": "reports", "signal_id": "tick", "statuses": ["completed", "failed"]},
    {"correlation_id": "corr-3"},
    {"root_session_id": "root-2", "statuses": ["active"]},
    {"parent_session_id": "p-1", "job_name": "stamp"},
    {"since": ts(10), "until": ts(20, 500)},
    {"workspace_id": "other", "since": ts(5, 500)},
]


@pytest.mark.parametrize("filters", FILTER_CASES)
def test_filters_combine_with_and(
    loaded: tuple[Model, list[tuple[dict[str, Any], dict[str, Any]]]], filters: dict[str, Any]
) -> None:
    rm, rows = loaded
    want = expected(rows, **filters)
    page, cursor = rm.list_sessions(limit=500, **filters)
    assert [s["sessionId"] for s in page] == want
    assert cursor is None
    assert 0 < len(want) < len(rows) or not filters, "each case must select a proper, non-empty subset"


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("limit", [1, 7, 50, 125, 250, 500])
def test_paging_visits_every_match_once_in_order(
    loaded: tuple[Model, list[tuple[dict[str, Any], dict[str, Any]]]],
    filters: dict[str, Any],
    limit: int,
) -> None:
    rm, rows = loaded
    assert all_pages(rm, limit, **filters) == expected(rows, **filters)


def test_exact_multiple_of_limit_has_no_empty_last_page(
    loaded: tuple[Model, list[tuple[dict[str, Any], dict[str, Any]]]],
) -> None:
    rm, _ = loaded
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = rm.list_sessions(limit=50, cursor=cursor)
        pages += 1
        assert len(page) == 50
        if cursor is None:
            break
    assert pages == 5


def test_unknown_values_match_nothing(
    loaded: tuple[Model, list[tuple[dict[str, Any], dict[str, Any]]]],
) -> None:
    rm, _ = loaded
    cases: list[dict[str, Any]] = [
        {"workspace_id": "nope"},
        {"correlation_id": "nope"},
        {"job_name": "nope"},
        {"signal_id": "nope"},
        {"parent_session_id": "nope"},
        {"root_session_id": "nope"},
        {"statuses": ["nope"]},
        {"statuses": []},
        {"workspace_id": "demo", "correlation_id": "corr-999"},
        {"since": ts(3599)},
    ]
    for filters in cases:
        assert rm.list_sessions(**filters) == ([], None), filters


def test_time_bounds_accept_any_rfc3339_shape(rm: Model) -> None:
    rm.upsert(*session("a", started_at="2026-11-24T10:15:02.000Z"))
    rm.upsert(*session("b", started_at="2026-11-24T10:15:02.123Z"))
    rm.upsert(*session("c", started_at="2026-11-24T10:15:03.000Z"))

    def ids(since: str | None = None, until: str | None = None) -> list[str]:
        return [s["sessionId"] for s in rm.list_sessions(since=since, until=until)[0]]

    assert ids(since="2026-11-24T10:15:02Z") == ["c", "b", "a"]  # inclusive
    assert ids(since="2026-11-24T10:15:02.123Z") == ["c", "b"]
    assert ids(until="2026-11-24T10:15:03Z") == ["b", "a"]  # exclusive
    assert ids(since="2026-11-24T12:15:02.0001+02:00") == ["c", "b"]  # offset, sub-millisecond
    assert ids(until="2026-11-24T10:15:02.1225Z") == ["a"]
    assert normalize_timestamp("2026-11-24T23:59:59.9999Z") == "2026-11-25T00:00:00.000Z"
    for bad in ("yesterday", "2026-11-24T10:15:02"):
        with pytest.raises(ValueError):
            rm.list_sessions(since=bad)


def test_bad_cursor_and_limit_raise_value_error(rm: Model) -> None:
    def b64(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    for bad in (
        "",
        "!!!",
        "not base64 at all",
        b64({"a": 1}),
        b64(["only-one"]),
        b64([1, 2]),
        b64(["", "x"]),
    ):
        with pytest.raises(ValueError):
            decode_cursor(bad)
        with pytest.raises(ValueError):
            rm.list_sessions(cursor=bad)
    assert decode_cursor(encode_cursor(ts(1), "sid")) == (ts(1), "sid")
    with pytest.raises(ValueError):
        rm.list_sessions(limit=0)


# -- lineage and status ----


def test_children_in_acceptance_order_and_descendants(rm: Model) -> None:
    rm.upsert_many(
        [
            session("root", queued_at=ts(0)),
            session("c2", queued_at=ts(5), parent="root", root="root"),
            session("c1", queued_at=ts(2), parent="root", root="root"),
            # Started before its older sibling: children still come in queuedAt order.
            session("c3", queued_at=ts(9), started_at=ts(1), parent="root", root="root"),
            session("g1", queued_at=ts(6), parent="c1", root="root"),
            session("gg1", queued_at=ts(7), parent="g1", root="root"),
            session("other", queued_at=ts(3)),
        ]
    )
    assert [s["sessionId"] for s in rm.children("root")] == ["c1", "c2", "c3"]
    assert rm.children("gg1") == []
    assert sorted(rm.descendants("root")) == ["c1", "c2", "c3", "g1", "gg1"]
    assert sorted(rm.descendants("c1")) == ["g1", "gg1"]
    assert rm.descendants("gg1") == []
    assert rm.descendants("unknown") == []


def test_descendants_terminate_on_a_cycle(rm: Model) -> None:
    rm.upsert_many([session("a", parent="b"), session("b", parent="a")])
    assert rm.descendants("a") == ["b"]


def test_non_terminal_and_counts(rm: Model) -> None:
    rm.upsert_many(
        [
            session("q", status="queued", queued_at=ts(3)),
            session("a", status="active", queued_at=ts(1)),
            session("c", status="completed"),
            session("f", status="failed"),
            session("f2", status="failed"),
        ]
    )
    assert [s["sessionId"] for s in rm.non_terminal()] == ["a", "q"]
    assert rm.count_by_status() == {"queued": 1, "active": 1, "completed": 1, "failed": 2}


def test_count_live_groups_queued_and_active_by_workspace(rm: Model) -> None:
    """The `atlas_sessions` gauge's one query (issue #18): terminal rows are not counted."""
    rm.upsert_many(
        [
            session("q1", status="queued", workspace_id="w1"),
            session("q2", status="queued", workspace_id="w1"),
            session("a1", status="active", workspace_id="w1"),
            session("a2", status="active", workspace_id="w2"),
            session("c", status="completed", workspace_id="w1"),
            session("f", status="failed", workspace_id="w2"),
        ]
    )
    assert rm.count_live() == {("queued", "w1"): 2, ("active", "w1"): 1, ("active", "w2"): 1}


# -- query plans at scale (checklist item 43) ----


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadModel]:
    model = ReadModel(tmp_path_factory.mktemp("big") / "atlas.db")
    batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i in range(100_000):
        batch.append(
            session(
                f"sid-{i:06d}",
                started_at=ts(i % 3600, i % 1000),
                workspace_id=f"ws-{i % 20}",
                correlation_id=f"corr-{i // 3}",
                status=STATUSES[i % len(STATUSES)],
            )
        )
        if len(batch) == 20_000:
            model.upsert_many(batch)
            batch = []
    model.upsert_many(batch)
    try:
        yield model
    finally:
        model.close()


def assert_index_search(plan: list[str]) -> None:
    assert plan, "empty plan"
    assert not any(step.startswith("SCAN") for step in plan), plan
    assert plan[0].startswith("SEARCH sessions USING ") and "INDEX" in plan[0], plan


def test_session_id_lookup_is_an_index_search(big: ReadModel) -> None:
    assert big.count_by_status()["queued"] > 14_000
    assert_index_search(big.explain_get())
    summary = big.get_summary("sid-054321")
    assert summary is not None and summary["correlationId"] == "corr-18107"


def test_correlation_id_lookup_is_an_index_search(big: ReadModel) -> None:
    plan = big.explain_list(correlation_id="corr-18107")
    assert_index_search(plan)
    assert "correlation_id=?" in plan[0]
    assert not any("TEMP B-TREE" in step for step in plan), plan  # served in order by the index
    cursor = encode_cursor(ts(100), "sid-000300")
    assert_index_search(big.explain_list(correlation_id="corr-18107", cursor=cursor, limit=1))
    page, _ = big.list_sessions(correlation_id="corr-18107")
    assert sorted(s["sessionId"] for s in page) == ["sid-054321", "sid-054322", "sid-054323"]


def test_other_indexed_filters_search(big: ReadModel) -> None:
    cases: list[dict[str, Any]] = [
        {"workspace_id": "ws-3"},
        {"parent_session_id": "x"},
        {"root_session_id": "sid-000001"},
        {"statuses": ["active"]},
    ]
    for filters in cases:
        assert_index_search(big.explain_list(**filters))


# -- PostgreSQL: schema versions and query plans at scale (issue #15) ----


def test_postgres_survives_reopening_and_migrates_once(pg_dsn: str) -> None:
    first = PostgresReadModel(pg_dsn)
    first.upsert(*session("s1", seq=2), stream_seq=9)
    first.close()
    first.close()  # idempotent
    second = PostgresReadModel(pg_dsn)
    try:
        assert second.get_last_seq("s1") == 2
        assert second.get_stream_seq() == 9
    finally:
        second.close()
    with psycopg.connect(pg_dsn) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [version for version, _ in MIGRATIONS]


def test_postgres_daemons_starting_together_migrate_once(pg_dsn: str) -> None:
    """Several adapters opening one empty database at the same moment (daemons started together): each waits on
    the advisory lock, one creates the schema, none fails, and every version is recorded once."""
    gate = threading.Barrier(4)
    opened: list[PostgresReadModel] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        gate.wait()
        try:
            opened.append(PostgresReadModel(pg_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(opened) == 4
        opened[0].upsert(*session("s1"))
        assert all(model.get_last_seq("s1") == 1 for model in opened)
    finally:
        for model in opened:
            model.close()
    with psycopg.connect(pg_dsn) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [version for version, _ in MIGRATIONS]


PG_BIG_ROWS = 30_000
"""Rows of the plan tests' table: enough that a sequential scan costs more than an index scan, and no more than
ANALYZE's default sample (300 × default_statistics_target), so the statistics and with them the plans are the
same on every run."""


@pytest.fixture(scope="module")
def big_pg(pg: PgServer) -> Iterator[PostgresReadModel]:
    """A PostgreSQL read model with PG_BIG_ROWS sessions in 20 workspaces × 7 statuses, correlations of three,
    and lineage: every session whose index is not a multiple of three is the child of the one before it."""
    model = PostgresReadModel(pg.create_database())
    batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i in range(PG_BIG_ROWS):
        batch.append(
            session(
                f"sid-{i:06d}",
                started_at=ts(i % 3600, i % 1000),
                workspace_id=f"ws-{i % 20}",
                correlation_id=f"corr-{i // 3}",
                status=STATUSES[i % len(STATUSES)],
                parent=f"sid-{i - 1:06d}" if i % 3 else None,
                root=f"sid-{i - i % 3:06d}",
            )
        )
        if len(batch) == 5_000:
            model.upsert_encoded(encode_rows(batch))
            batch = []
    model.upsert_encoded(encode_rows(batch))
    with psycopg.connect(model.dsn, autocommit=True) as conn:
        conn.execute("ANALYZE sessions")
    try:
        yield model
    finally:
        model.close()


def assert_pg_index_scan(plan: list[str], index: str) -> None:
    """No sequential scan of the sessions table anywhere in the plan, and `index` is what reads it."""
    text = "\n".join(plan)
    assert "Seq Scan" not in text, text
    assert f"Index Scan using {index} on sessions" in text or f"Index Scan Backward using {index} on sessions" \
        in text or f"Index Only Scan using {index} on sessions" in text or f"Bitmap Index Scan on {index}" in text, text


def test_postgres_plan_table_is_loaded_and_analyzed(big_pg: PostgresReadModel) -> None:
    assert sum(big_pg.count_by_status().values()) == PG_BIG_ROWS
    with psycopg.connect(big_pg.dsn) as conn:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'sessions'").fetchone()
    assert row is not None and int(row[0]) == PG_BIG_ROWS  # ANALYZE ran and saw every row


def test_postgres_session_id_lookup_is_an_index_scan(big_pg: PostgresReadModel) -> None:
    assert_pg_index_scan(big_pg.explain_get(), "sessions_pkey")
    summary = big_pg.get_summary("sid-024321")
    assert summary is not None and summary["correlationId"] == "corr-8107"


def test_postgres_correlation_id_lookup_is_an_index_scan(big_pg: PostgresReadModel) -> None:
    assert_pg_index_scan(big_pg.explain_list(correlation_id="corr-8107"), "idx_sessions_correlation")
    cursor = encode_cursor(ts(100), "sid-000300")
    assert_pg_index_scan(big_pg.explain_list(correlation_id="corr-8107", cursor=cursor, limit=1),
                         "idx_sessions_correlation")
    page, _ = big_pg.list_sessions(correlation_id="corr-8107")
    assert sorted(s["sessionId"] for s in page) == ["sid-024321", "sid-024322", "sid-024323"]


def test_postgres_workspace_and_status_list_is_an_index_scan(big_pg: PostgresReadModel) -> None:
    assert_pg_index_scan(big_pg.explain_list(workspace_id="ws-3", statuses=["active"]),
                         "idx_sessions_workspace_status")
    page, cursor = big_pg.list_sessions(workspace_id="ws-3", statuses=["active"], limit=20)
    assert len(page) == 20 and cursor is not None
    assert all(s["workspaceId"] == "ws-3" and s["status"] == "active" for s in page)
    keys = [(s["startedAt"], s["sessionId"]) for s in page]
    assert keys == sorted(keys, reverse=True)
    for filters in ({"workspace_id": "ws-3"}, {"statuses": ["active"]}, {}):
        assert "Seq Scan" not in "\n".join(big_pg.explain_list(**filters)), filters


def test_postgres_lineage_lookups_are_index_scans(big_pg: PostgresReadModel) -> None:
    assert_pg_index_scan(big_pg.explain_list(parent_session_id="sid-000301"), "idx_sessions_parent")
    assert_pg_index_scan(big_pg.explain_list(root_session_id="sid-000300"), "idx_sessions_root")
    # The queries of children() and of descendants() (its recursive step joins on parent_session_id).
    assert_pg_index_scan(
        big_pg.explain("SELECT summary_json FROM sessions WHERE parent_session_id = %s ORDER BY queued_at, session_id",
                       ("sid-000301",)),
        "idx_sessions_parent",
    )
    assert [s["sessionId"] for s in big_pg.children("sid-000300")] == ["sid-000301"]
    assert sorted(big_pg.descendants("sid-000300")) == ["sid-000301", "sid-000302"]
    page, _ = big_pg.list_sessions(root_session_id="sid-000300")
    assert sorted(s["sessionId"] for s in page) == ["sid-000300", "sid-000301", "sid-000302"]


def test_postgres_writers_of_overlapping_rows_in_any_order_never_fail(pg_dsn: str) -> None:
    """Several daemons upserting the same sessions in different orders (each materialises every event of the
    cluster): batches must wait for each other, not deadlock (a deadlock made the store answer triggers 503)."""
    models = [PostgresReadModel(pg_dsn) for _ in range(4)]
    sids = [f"s{i:03d}" for i in range(150)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(models))

    def write(rm: PostgresReadModel, seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for seq in range(1, 16):
                order = sids[:]
                rng.shuffle(order)
                rm.upsert_many([session(sid, seq=seq) for sid in order])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(rm, n)) for n, rm in enumerate(models)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert errors == []
        assert {models[0].get_last_seq(sid) for sid in sids} == {15}
    finally:
        for rm in models:
            rm.close()


def test_session_id_prefix_is_an_exact_prefix_on_both_adapters(rm: Model) -> None:
    """`sessionIdPrefix` (issue #16: the UI and the CLI accept short ids): case-sensitive, no LIKE wildcards."""
    for sid in ("abcd1234-0001", "abcd1234-0002", "abcd9999-0001", "ABCD1234-0003", "abcd_234-0004"):
        assert rm.upsert(*session(sid, seq=1, status="queued"))

    def ids(prefix: str) -> list[str]:
        return sorted(s["sessionId"] for s in rm.list_sessions(session_id_prefix=prefix)[0])

    assert ids("abcd1234") == ["abcd1234-0001", "abcd1234-0002"]
    assert ids("abcd1234-0002") == ["abcd1234-0002"]
    assert ids("abcd_") == ["abcd_234-0004"]
    assert ids("ABCD") == ["ABCD1234-0003"]
    assert ids("zz") == []
    page, cursor = rm.list_sessions(session_id_prefix="abcd1234", limit=1)  # pages like any other filter
    assert len(page) == 1 and cursor is not None
