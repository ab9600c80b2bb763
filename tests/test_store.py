"""The session store's batched read-model writes (spec §4.3 read-your-writes, §7.1): one batch on the writer
thread at a time, the rest waits in memory, and nothing is lost or read stale on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from atlas.sessions import events
from atlas.sessions.readmodel import ReadModel
from atlas.sessions.store import SessionStore


def queued(sid: str, n: int) -> dict[str, Any]:
    return {"type": "session:queued", "sessionId": sid, "seq": 1, "timestamp": f"2026-11-25T10:00:{n % 60:02d}.000Z",
            "workspaceId": "w", "jobName": "j", "signalId": "s", "task": "j", "trigger": "http",
            "correlationId": f"c-{sid}", "rootSessionId": sid, "depth": 0, "plannedSteps": [], "payload": {"n": n}}


def started(sid: str) -> dict[str, Any]:
    return {"type": "session:start", "sessionId": sid, "seq": 2, "timestamp": "2026-11-25T10:01:00.000Z",
            "workspaceId": "w", "jobName": "j", "signalId": "s", "correlationId": f"c-{sid}", "rootSessionId": sid,
            "depth": 0, "plannedSteps": []}


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    return SessionStore(ReadModel(tmp_path / "atlas.db"))


async def test_rows_dirtied_during_a_write_wait_for_it_and_go_in_one_next_batch(store: SessionStore) -> None:
    rm = store._rm
    store.apply(queued("first", 0), new=True)
    with rm._lock:  # the writer thread blocks inside its transaction until this is released
        store.flush()
        assert not store._idle.is_set() and "first" in store._writing
        for n in range(200):
            store.apply(queued(f"s{n}", n), new=True)
            store.flush()  # what the timer would do: nothing new is handed over while a batch is in flight
        store.apply(started("first"))
        assert store._batches.qsize() <= 1
        assert len(store._dirty) == 201
        # Every session is readable meanwhile, the one being written included (with its newest view).
        assert all(store.view(f"s{n}") is not None for n in range(200))
        assert (store.view("first") or {})["status"] == "active"
    # Read-your-writes through `rm`: the batch in flight is committed, the rest written before the read.
    assert sum(store.rm.count_by_status().values()) == 201
    assert (store.rm.get_view("first") or {})["status"] == "active"
    await wait_until(lambda: not store._writing)
    store.close()


async def test_a_read_while_a_batch_is_written_does_not_hide_the_sessions_end(store: SessionStore) -> None:
    # A read through `rm` waits for the batch in flight and writes what is dirty there and then, before the loop
    # has heard that the batch is committed. The session's end, applied in between, must stay what `view` and
    # `wait_terminal` see: the batch in flight (the session still active) once hid it until the loop caught up,
    # and a `wait_terminal` that began in that window waited for an end already applied (a flaky two-daemon test).
    store.apply(queued("s", 0), new=True)
    store.apply(started("s"))
    store.flush()  # the active view goes to the writer thread
    assert (store._writing.get("s") or {}).get("status") == "active"
    store.apply(events.complete(sessionId="s", seq=3, status="completed", durationMs=1.0,
                                timestamp="2026-11-25T10:02:00.000Z"))
    assert (store.rm.get_view("s") or {})["status"] == "completed"  # a read: no await, the loop has heard nothing
    assert (store.view("s") or {})["status"] == "completed"
    assert (await store.wait_terminal("s", 5))["status"] == "completed"
    await wait_until(lambda: not store._writing)
    assert (store.view("s") or {})["status"] == "completed"
    store.close()


async def test_a_burst_of_applies_is_all_in_sqlite_once_the_writer_is_idle(store: SessionStore) -> None:
    for n in range(2000):
        store.apply(queued(f"b{n}", n), new=True)
        if n % 50 == 0:
            await asyncio.sleep(0)  # let the flush timer and the writer's callbacks run, as under real load
    await wait_until(lambda: not store._dirty and not store._writing and store._idle.is_set(), timeout=30)
    assert sum(store._rm.count_by_status().values()) == 2000  # straight from SQLite, no flush on the way
    store.close()


def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    async def fill() -> SessionStore:
        s = SessionStore(ReadModel(tmp_path / "atlas.db"))
        for n in range(10):
            s.apply(queued(f"c{n}", n), new=True)
        return s

    s = asyncio.run(fill())
    s.close()
    again = ReadModel(tmp_path / "atlas.db")
    try:
        assert sum(again.count_by_status().values()) == 10
    finally:
        again.close()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_a_session_whose_log_lacks_its_head_does_not_block_later_writes(tmp_path: Path) -> None:
    """A view folded from a log whose first events aged out has no sessionId: it is dropped, and the rows applied
    with it and after it are still written (it used to fail every later flush with `ValueError`)."""
    s = SessionStore(ReadModel(tmp_path / "atlas.db"))
    s.apply({"type": "step:skipped", "sessionId": "tail-only", "seq": 7, "timestamp": "2026-01-01T00:00:00.000Z",
             "stateId": "x", "agentName": "a"})
    s.apply(queued("s1", 1))
    s.flush()
    page, _ = s.rm.list_sessions()
    assert [row["sessionId"] for row in page] == ["s1"]
    s.apply(started("s1"))
    assert s.rm.get_view("s1")["status"] == "active"
    s.close()
