"""Concurrent cancels of one session (issue #19, bug 5): cancel is idempotent and safe to race.

A second cancel once cancelled the runner again while it was writing the first cancel's `step:complete`: the
session's terminal event was lost, the session stayed `active` until recovery ended it `interrupted` a minute
later, and both DELETEs answered 202 after their 5 s wait. The first cancel's reason must win and every caller
must see the session end `cancelled`.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.daemon_proc import DaemonProcess, wait_for

CALLERS = 8
SESSIONS = 6


async def _cancel_all(url: str, sid: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return list(await asyncio.gather(*(client.delete(f"/api/sessions/{sid}") for _ in range(CALLERS))))


def test_many_concurrent_cancels_end_the_session_cancelled(daemon: DaemonProcess) -> None:
    for _ in range(SESSIONS):
        r = httpx.post(f"{daemon.url}/api/workspaces/core/signals/slow?nowait=true",
                       json={"payload": {"duration": "60s"}}, timeout=10)
        assert r.status_code == 202, r.text
        sid = r.json()["sessionId"]
        wait_for(lambda sid=sid: httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=5).json()["status"]
                 == "active", what="the session to start")

        answers = asyncio.run(_cancel_all(daemon.url, sid))

        for answer in answers:
            body = answer.json()
            if answer.status_code == 409:  # it had ended when this DELETE looked: it must say how
                assert body["error"]["code"] == "session_not_active", body
                assert body["error"]["details"]["status"] == "cancelled", body
            else:
                assert answer.status_code == 200, body  # ended within the wait, not 202 after 5 s
                assert body["status"] == "cancelled", body
        view = httpx.get(f"{daemon.url}/api/sessions/{sid}", timeout=5).json()
        assert view["status"] == "cancelled" and view["errorCode"] == "cancelled_by_user", view
        assert view["agentBlocks"][0]["status"] == "failed", view  # the step recorded the cancel too
