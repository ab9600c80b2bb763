"""kill -9 while a `concurrency: queue` session waits behind a running one (issue #19, bug 13).

Start-up recovery ends the running session `interrupted`, releases its hold and promotes the parked session; the
promoted session must then run. It once stayed `queued` for good: recovery promoted it before the daemon had a
consumer to start it with (an AttributeError, logged as "recovery will retry"), and no later pass looked again
because the promoted session was already the key's holder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atlas.bus.client import KV_INFLIGHT
from atlas.runtime.accept import TriggerRequest
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.inproc import running
from tests.test_crash_recovery import trigger, view

# Runner slots to spare, so the second trigger is fetched and parked in its key's queue (not left in SIGNALS).
ENV = {"ATLAS_ACK_WAIT": "2s", "ATLAS_SHUTDOWN_GRACE": "1s"}


def test_parked_session_runs_after_kill9_of_the_one_ahead(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"], ENV).start()
    try:
        first = trigger(d, "hold-queue", {"duration": "60s"})
        wait_for(lambda: view(d, first["sessionId"])["status"] == "active", what="the first session to start")
        second = trigger(d, "hold-queue", {"duration": "10ms"})
        wait_for(lambda: view(d, second["sessionId"])["status"] == "queued", what="the second session to park")

        d.kill9()
        d.start()

        wait_for(lambda: view(d, first["sessionId"])["status"] == "interrupted", 40, what="first interrupted")
        done = wait_for(lambda: (v := view(d, second["sessionId"]))["status"] == "completed" and v, 40,
                        what="the parked session to run after the restart")
        assert done["correlationId"] == second["correlationId"]
        assert "no attribute" not in d.log()
    finally:
        d.stop()


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `predicate` on the loop until it is truthy (a deadline, never a bare sleep as synchronisation)."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.02)
    assert value, what
    return value


async def test_recovery_starts_a_promoted_session_whose_promoter_failed(tmp_path: Path) -> None:
    """The hold moved to the parked session, and whoever moved it failed before starting it: recovery starts it."""
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        def status(sid: str) -> str | None:
            view = d.store.view(sid)
            return None if view is None else str(view["status"])

        first = await d.accept.accept(TriggerRequest("core", "hold-queue", {"duration": "60s"}, "http"))
        await _until(lambda: status(first.session_id) == "active", "the first session to start")
        second = await d.accept.accept(TriggerRequest("core", "hold-queue", {"duration": "10ms"}, "http"))
        record = await _wait_parked(d, second.session_id)
        assert record["parked"] is True

        # What a finishing holder does first (release, which promotes the head of the queue) without the start.
        promoted = await d.concurrency.release("core", "hold-queue", first.session_id, "queue")
        assert promoted == second.session_id and status(second.session_id) == "queued"

        await d.recovery.run_once(at_start=False)
        await _until(lambda: status(second.session_id) == "completed", "the promoted session to run")


async def _wait_parked(d: Any, sid: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while (found := await d.bus.kv_get(KV_INFLIGHT, sid)) is None:
            await asyncio.sleep(0.02)
    return dict(found[0])
