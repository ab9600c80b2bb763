"""The SQLite read model (spec §7.1, §7.2; checklist items 42 and 43)."""

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

import pytest

from atlas.sessions.readmodel import (
    STREAM_SEQ_KEY,
    ReadModel,
    decode_cursor,
    encode_cursor,
    normalize_timestamp,
    open_read_model,
)

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


@pytest.fixture
def rm(tmp_path: Path) -> Iterator[ReadModel]:
    model = ReadModel(tmp_path / "atlas.db")
    try:
        yield model
    finally:
        model.close()


def all_pages(rm: ReadModel, limit: int, **filters: Any) -> list[str]:
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


def test_upsert_is_guarded_by_last_seq(rm: ReadModel) -> None:
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


def test_unknown_session_reads(rm: ReadModel) -> None:
    assert rm.get_view("nope") is None
    assert rm.get_summary("nope") is None
    assert rm.get_last_seq("nope") == 0


def test_stream_seq_is_stored_with_the_rows_and_only_moves_forward(rm: ReadModel) -> None:
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


def test_upsert_many_applies_a_batch_in_order(rm: ReadModel) -> None:
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
    assert written == 3
    assert rm.get_last_seq("a") == 2
    assert (rm.get_summary("a") or {})["status"] == "active"
    assert (rm.get_summary("old") or {})["status"] == "active"
    assert rm.get_stream_seq() == 42


def test_a_batch_larger_than_one_statement_is_split_and_stays_in_order(rm: ReadModel) -> None:
    """Batches go in as multi-row statements; across the chunk boundaries rows still apply in order."""
    rm._rows_per_statement = 2
    rows = [session("a", seq=1), session("b", seq=1), session("a", seq=2, status="active"),
            session("c", seq=1), session("a", seq=3, status="completed")]
    assert rm.upsert_many(rows, stream_seq=5) == 5
    assert (rm.get_summary("a") or {})["status"] == "completed" and rm.get_last_seq("a") == 3
    assert rm.get_view("b") is not None and rm.get_view("c") is not None
    assert rm.get_stream_seq() == 5


def test_stored_documents_are_the_compact_json_of_the_view_and_summary(rm: ReadModel) -> None:
    view, summary = session("u", seq=1)
    view["payload"] = {"text": "é\u2028\n\"\\ \u0001 😀", "big": 12345678901234567890, "f": 1e-7}
    rm.upsert_many([(view, summary)])
    stored = rm._conn.execute("SELECT view_json, summary_json FROM sessions WHERE session_id = 'u'").fetchone()
    assert json.loads(stored[0]) == view
    assert '"text":"é' in stored[0] and ", " not in stored[0] and '": ' not in stored[0]  # compact, UTF-8 as is
    assert json.loads(stored[1]) == summary


def test_a_failed_batch_writes_nothing(rm: ReadModel) -> None:
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


def test_concurrent_writers_from_threads(rm: ReadModel) -> None:
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


def test_database_is_in_wal_mode(rm: ReadModel) -> None:
    # WAL is a property of the file, so another connection sees it.
    other = sqlite3.connect(rm.path)
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
def loaded(rm: ReadModel) -> tuple[ReadModel, list[tuple[dict[str, Any], dict[str, Any]]]]:
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
    loaded: tuple[ReadModel, list[tuple[dict[str, Any], dict[str, Any]]]], filters: dict[str, Any]
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
    loaded: tuple[ReadModel, list[tuple[dict[str, Any], dict[str, Any]]]],
    filters: dict[str, Any],
    limit: int,
) -> None:
    rm, rows = loaded
    assert all_pages(rm, limit, **filters) == expected(rows, **filters)


def test_exact_multiple_of_limit_has_no_empty_last_page(
    loaded: tuple[ReadModel, list[tuple[dict[str, Any], dict[str, Any]]]],
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
    loaded: tuple[ReadModel, list[tuple[dict[str, Any], dict[str, Any]]]],
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


def test_time_bounds_accept_any_rfc3339_shape(rm: ReadModel) -> None:
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


def test_bad_cursor_and_limit_raise_value_error(rm: ReadModel) -> None:
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


def test_children_in_acceptance_order_and_descendants(rm: ReadModel) -> None:
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


def test_descendants_terminate_on_a_cycle(rm: ReadModel) -> None:
    rm.upsert_many([session("a", parent="b"), session("b", parent="a")])
    assert rm.descendants("a") == ["b"]


def test_non_terminal_and_counts(rm: ReadModel) -> None:
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
