"""A cancel that lands while the runner is appending an event (found while fixing issue #19, bug 7).

The cancel interrupted `SessionWriter.append` after its event was sent: the event landed, but the writer's position
did not move, so the runner's next write (its `session:complete`) was refused as out of sequence and the session
stayed `active` until recovery ended it `interrupted` a minute later. A job of 200 no-op steps spends nearly all
its time appending events, so cancelling it at once lands mid-append most of the time.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

ROUNDS = 12


@pytest.fixture(scope="module")
def streams_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-home"), [FIXTURES / "streams"]).start()
    yield proc
    proc.stop()


def test_cancelling_a_session_that_is_appending_ends_it_cancelled(streams_daemon: DaemonProcess) -> None:
    """A round whose session completed before the DELETE arrived (the job is short, and a busy machine may see it
    `active` late) tests nothing and is not counted; most rounds must land mid-run."""
    d = streams_daemon
    cancelled = 0
    for _ in range(ROUNDS):
        r = httpx.post(f"{d.url}/api/workspaces/streams/signals/many?nowait=true", json={"payload": {}}, timeout=10)
        assert r.status_code == 202, r.text
        sid = r.json()["sessionId"]
        wait_for(lambda sid=sid: httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()["status"] == "active",
                 what="the session to start")

        answer = httpx.delete(f"{d.url}/api/sessions/{sid}", timeout=30)

        body = answer.json()
        if answer.status_code == 409 and body["error"].get("details", {}).get("status") == "completed":
            continue  # finished first: nothing was cancelled mid-append
        assert answer.status_code == 200, body  # ended within the DELETE's wait, not left active
        assert body["status"] == "cancelled", body
        view = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()
        assert view["status"] == "cancelled" and view["errorCode"] == "cancelled_by_user", view
        cancelled += 1
    assert cancelled >= ROUNDS // 2, f"only {cancelled} of {ROUNDS} sessions were still running when cancelled"
    assert "ended by another writer" not in d.log()
