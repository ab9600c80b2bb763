"""A read model damaged after a clean stop is moved aside and rebuilt from the bus (issue #19, bug 8).

The read model is a rebuildable index of SESSION_EVENTS (docs/decisions.md): a file that is not a healthy database
must never keep the daemon from starting. Before the fix only an *unclean* stop led to an integrity check, so a
file damaged after a clean stop was opened as it was and the first query that touched a damaged page ended the
start with exit 1. The file is damaged here in three ways: garbage over the header, truncation, and pages
overwritten in the middle.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.sessions.readmodel import ReadModel, open_read_model
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

PAGE = 4096
SESSIONS = 300


def damage(path: Path, how: str) -> None:
    """Damage a closed database file the way a bad disk, a lost write-back or a careless copy would."""
    data = bytearray(path.read_bytes())
    pages = len(data) // PAGE
    assert pages >= 8, "the store is too small to damage its middle"
    if how == "header":
        data[:100] = b"\xa5" * 100
    elif how == "truncated":
        del data[(pages // 2) * PAGE:]
    elif how == "middle":
        first, last = pages // 4, pages - pages // 4  # the header page and the last pages stay intact
        data[first * PAGE:last * PAGE] = b"\xff" * ((last - first) * PAGE)
    else:
        raise AssertionError(how)
    path.write_bytes(bytes(data))


def session(sid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = {"sessionId": sid, "workspaceId": "ws", "correlationId": f"c-{sid}", "jobName": "j", "signalId": "s",
               "status": "completed", "startedAt": "2026-11-24T10:00:00.000Z", "queuedAt": "2026-11-24T10:00:00.000Z"}
    return {**summary, "lastSeq": 3, "padding": "x" * 300}, summary


@pytest.mark.parametrize("how", ["header", "truncated", "middle"])
def test_a_file_damaged_after_a_clean_close_is_moved_aside(tmp_path: Path, how: str) -> None:
    path = tmp_path / "atlas.db"
    rm = ReadModel(path)
    rm.upsert_many([session(f"s{i:04d}") for i in range(SESSIONS)], stream_seq=SESSIONS)
    rm.close()
    damage(path, how)
    reopened = open_read_model(path)
    try:
        assert len(list(tmp_path.glob("atlas.db.corrupt-*"))) == 1, "the damaged file was not moved aside"
        assert reopened.get_stream_seq() == 0  # empty: the materialiser refills it from the bus
        assert reopened.list_sessions(limit=500)[0] == []
    finally:
        reopened.close()


def test_a_healthy_file_closed_cleanly_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "atlas.db"
    rm = ReadModel(path)
    rm.upsert_many([session(f"s{i:04d}") for i in range(SESSIONS)], stream_seq=SESSIONS)
    rm.close()
    for _ in range(2):  # twice: the second start follows a start that skipped nothing it should not have
        reopened = open_read_model(path)
        try:
            assert reopened.get_stream_seq() == SESSIONS
            assert len(reopened.list_sessions(limit=500)[0]) == SESSIONS
        finally:
            reopened.close()
    assert not list(tmp_path.glob("atlas.db.corrupt-*"))


def test_a_file_changed_after_a_clean_close_is_checked_even_if_its_size_is_unchanged(tmp_path: Path) -> None:
    """One page overwritten in place: same size, same header; only the full check can tell."""
    path = tmp_path / "atlas.db"
    rm = ReadModel(path)
    rm.upsert_many([session(f"s{i:04d}") for i in range(SESSIONS)], stream_seq=SESSIONS)
    rm.close()
    data = bytearray(path.read_bytes())
    middle = (len(data) // PAGE) // 2
    data[middle * PAGE:(middle + 1) * PAGE] = b"\x00\x13" * (PAGE // 2)
    path.write_bytes(bytes(data))
    reopened = open_read_model(path)
    try:
        assert len(list(tmp_path.glob("atlas.db.corrupt-*"))) == 1
    finally:
        reopened.close()


@pytest.fixture(scope="module")
def stopped_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An ATLAS_HOME whose daemon ran SESSIONS sessions to completion and then stopped cleanly."""
    home = tmp_path_factory.mktemp("damage") / "home"
    d = DaemonProcess(home, [FIXTURES / "core"]).start()
    try:
        sids = []
        for i in range(SESSIONS):
            r = httpx.post(f"{d.url}/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": i}},
                           timeout=10)
            assert r.status_code == 202, r.text
            sids.append(r.json()["sessionId"])
        wait_for(lambda: all(httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()["status"] == "completed"
                             for sid in sids[-5:]), 60, what="the sessions to complete")
    finally:
        assert d.stop() == 0, d.log()
    (home / "daemon-test.log").unlink()
    return home, sids


def listed(d: DaemonProcess) -> set[str]:
    seen: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{d.url}/api/sessions", params=params, timeout=10).json()
        seen |= {s["sessionId"] for s in page["sessions"] if s["status"] == "completed"}
        cursor = page.get("nextCursor")
        if not cursor:
            return seen


@pytest.mark.parametrize("how", ["header", "truncated", "middle"])
def test_the_daemon_starts_on_a_damaged_read_model_and_rebuilds_it(
    stopped_home: tuple[Path, list[str]], tmp_path: Path, how: str
) -> None:
    source, sids = stopped_home
    home = tmp_path / "home"
    shutil.copytree(source, home)
    damage(home / "atlas.db", how)
    d = DaemonProcess(home, [FIXTURES / "core"]).start()  # raised "daemon exited with 1" before the fix
    try:
        assert len(list(home.glob("atlas.db.corrupt-*"))) == 1, "the damaged file was not moved aside"
        wait_for(lambda: listed(d) >= set(sids), 30, what="every session listed again")
        assert httpx.get(f"{d.url}/api/sessions/{sids[0]}", timeout=5).json()["status"] == "completed"
    finally:
        assert d.stop() == 0, d.log()
