"""Why a run waits, or was skipped (issue #16, item 5).

A queued session's view says what it waits for (`waitingFor`): `pending` from its `session:queued` until a runner
takes it, `concurrency` with the sessions ahead of it once the consumer parks it behind its `queue` key (a durable
`session:waiting` event); `session:start` and `session:complete` clear it. A session skipped by policy `skip`
carries `duplicateOf` (view, summary, the sync trigger's 409 `details.runningSessionId`). The CLI's `sessions show`
and the run page say the same, with links. A real daemon (`tests/fixtures/core`: `hold-queue`, `hold-skip` and
`slow` sleep as long as their payload asks), the CLI as a subprocess, the UI in Chromium; the pure fold is checked
in Python and in the browser's reducer.js.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from atlas.sessions import events as ev
from atlas.sessions.reducer import build_view, summarize
from tests.browser import CHROMIUM
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.test_cli import atlas, clean_env

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}
LONG = {"duration": "120s"}
SLOTS = 3  # the daemon's runner slots (ATLAS_MAX_CONCURRENT_SESSIONS)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    # Few runner slots: `SLOTS` slow runs fill them, so one more is visibly not taken by any runner (`pending`).
    proc = DaemonProcess(tmp_path_factory.mktemp("atlas-waiting"), [FIXTURES / "core"],
                         {"ATLAS_MAX_CONCURRENT_SESSIONS": str(SLOTS)}).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("waiting-cli-home"))


def nowait(d: DaemonProcess, signal: str, payload: dict[str, Any]) -> str:
    r = httpx.post(f"{d.url}/api/workspaces/core/signals/{signal}?nowait=true", json={"payload": payload},
                   timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["sessionId"])


def view(d: DaemonProcess, sid: str) -> dict[str, Any]:
    r = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def until(d: DaemonProcess, sid: str, check: Any, what: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = view(d, sid)
        return current if check(current) else None

    found: dict[str, Any] = wait_for(reached, 30, what=what)
    return found


def active(d: DaemonProcess, sid: str) -> dict[str, Any]:
    return until(d, sid, lambda v: v["status"] == "active", f"{sid} to start")


def end_all(d: DaemonProcess, *sids: str) -> None:
    """Cancel sessions (a cancelled holder promotes the next parked one, which is cancelled in turn) and wait until
    each has ended, so the next test finds the runner slots free."""
    for sid in sids:
        r = httpx.delete(f"{d.url}/api/sessions/{sid}", timeout=30)
        assert r.status_code in (200, 202, 409), r.text
        until(d, sid, lambda v: v["status"] in TERMINAL, f"{sid} to end")


def cli_field(d: DaemonProcess, env: dict[str, str], sid: str, label: str) -> str | None:
    r = atlas(d, env, "sessions", "show", sid)
    assert r.returncode == 0, r.stderr
    found = re.search(rf"^{label}\s+(.+)$", r.stdout, re.M)
    return found.group(1).strip() if found else None


# ---------------------------------------------------------------- a real daemon


def test_a_parked_queue_session_says_what_it_waits_for_until_it_starts(daemon: DaemonProcess,
                                                                        env: dict[str, str]) -> None:
    first = nowait(daemon, "hold-queue", LONG)
    active(daemon, first)
    assert "waitingFor" not in view(daemon, first)  # started: it waits for nothing
    second = nowait(daemon, "hold-queue", LONG)
    parked = until(daemon, second, lambda v: v.get("waitingFor", {}).get("reason") == "concurrency",
                   "the second hold-queue run to be parked")
    assert parked["status"] == "queued"
    assert parked["waitingFor"] == {"reason": "concurrency", "sessionIds": [first]}
    # A third waits for the holder and for the session parked ahead of it.
    third = nowait(daemon, "hold-queue", LONG)
    behind = until(daemon, third, lambda v: v.get("waitingFor", {}).get("reason") == "concurrency",
                   "the third hold-queue run to be parked")
    assert behind["waitingFor"] == {"reason": "concurrency", "sessionIds": [first, second]}
    # The CLI says the same.
    assert cli_field(daemon, env, second, "waiting") == f"waiting for {first} (concurrency)"

    # The holder ends: the second starts and waits for nothing; the third still waits (as recorded when parked).
    end_all(daemon, first)
    started = active(daemon, second)
    assert "waitingFor" not in started
    assert view(daemon, third)["waitingFor"]["sessionIds"] == [first, second]
    assert cli_field(daemon, env, second, "waiting") is None

    end_all(daemon, second, third)
    assert "waitingFor" not in view(daemon, third)  # ended (cancelled or run): no longer waiting


def test_a_skipped_duplicate_links_the_running_session(daemon: DaemonProcess, env: dict[str, str]) -> None:
    holder = nowait(daemon, "hold-skip", LONG)
    active(daemon, holder)
    skipped = nowait(daemon, "hold-skip", LONG)
    ended = until(daemon, skipped, lambda v: v["status"] in TERMINAL, "the duplicate to be skipped")
    assert (ended["status"], ended["errorCode"], ended["duplicateOf"]) == ("skipped", "skipped-duplicate", holder)
    assert "waitingFor" not in ended and "duplicateOf" not in view(daemon, holder)

    listed = httpx.get(f"{daemon.url}/api/sessions", params={"workspaceId": "core", "limit": 50}, timeout=10).json()
    by_id = {s["sessionId"]: s for s in listed["sessions"]}
    assert by_id[skipped]["duplicateOf"] == holder
    assert "duplicateOf" not in by_id[holder]

    # A waiting trigger is refused with the session that made it skip.
    r = httpx.post(f"{daemon.url}/api/workspaces/core/signals/hold-skip", json={"payload": LONG}, timeout=30)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "skipped-duplicate" and error["details"]["runningSessionId"] == holder

    assert cli_field(daemon, env, skipped, "skipped") == f"duplicate of {holder}"
    end_all(daemon, holder)


def test_a_run_no_runner_has_taken_yet_is_pending(daemon: DaemonProcess) -> None:
    busy = [nowait(daemon, "slow", LONG) for _ in range(SLOTS)]
    for sid in busy:
        active(daemon, sid)  # every runner slot is taken
    waiting = nowait(daemon, "slow", LONG)
    queued = view(daemon, waiting)
    assert queued["status"] == "queued"
    assert queued["waitingFor"] == {"reason": "pending"}
    end_all(daemon, busy[0])
    assert "waitingFor" not in active(daemon, waiting)
    end_all(daemon, *busy[1:], waiting)


async def test_the_run_page_links_what_a_run_waits_for_and_what_it_duplicates(daemon: DaemonProcess,
                                                                              browser: Browser) -> None:
    holder = nowait(daemon, "hold-queue", LONG)
    active(daemon, holder)
    parked = nowait(daemon, "hold-queue", LONG)
    until(daemon, parked, lambda v: v.get("waitingFor", {}).get("reason") == "concurrency", "the run to be parked")
    running = nowait(daemon, "hold-skip", LONG)
    active(daemon, running)
    skipped = nowait(daemon, "hold-skip", LONG)
    until(daemon, skipped, lambda v: v["status"] == "skipped", "the duplicate to be skipped")

    context = await browser.new_context(base_url=daemon.url)
    errors: list[str] = []
    context.on("page", lambda p: p.on("pageerror", lambda exc: errors.append(str(exc))))
    try:
        page = await context.new_page()
        await page.goto(f"/sessions/{parked}")
        waiting = page.locator("#waiting-for")
        await expect(waiting).to_have_text(f"{holder[:8]} to end (concurrency)")
        await expect(page.locator("dt", has_text="Waiting for")).to_be_visible()
        await waiting.get_by_role("link", name=holder[:8]).click()
        await expect(page).to_have_url(re.compile(rf"/sessions/{holder}$"))
        await expect(page.locator("#session-id")).to_have_text(holder)
        await expect(page.locator("#waiting-for")).to_have_count(0)  # a running session waits for nothing

        # Live: the holder ends, the parked run starts and the page drops its "Waiting for".
        await page.goto(f"/sessions/{parked}")
        await expect(page.locator("#waiting-for")).to_be_visible()
        end_all(daemon, holder)
        await expect(page.locator("#waiting-for")).to_have_count(0)

        await page.goto(f"/sessions/{skipped}")
        duplicate = page.locator("#duplicate-of")
        await expect(duplicate).to_have_text(f"duplicate of {running[:8]}")
        await expect(page.locator("dt", has_text="Skipped")).to_be_visible()
        await duplicate.get_by_role("link").click()
        await expect(page).to_have_url(re.compile(rf"/sessions/{running}$"))
    finally:
        await context.close()
        end_all(daemon, parked, running)
    assert not errors, errors


# ---------------------------------------------------------------- the fold, in Python and in reducer.js

SID = "5b1f8e2a-0c3d-4e5f-8a9b-1c2d3e4f5a6b"
PLAN = [ev.planned_step(agentName="wait", stateId="s0", task="t", actionType="agent", outputKey="wait")]
LINEAGE: dict[str, Any] = {"workspaceId": "core", "jobName": "hold-queue", "signalId": "hold-queue", "task": "t",
                           "correlationId": "c", "rootSessionId": SID, "depth": 0, "plannedSteps": PLAN}


def fold_cases() -> dict[str, list[dict[str, Any]]]:
    queued = dict(ev.queued(sessionId=SID, trigger="http", payload={}, timestamp="2026-01-01T00:00:00.000Z",
                            **LINEAGE))
    waiting = dict(ev.waiting(sessionId=SID, seq=2, reason="concurrency", sessionIds=["h1", "q1"],
                              timestamp="2026-01-01T00:00:01.000Z"))
    start = dict(ev.start(sessionId=SID, seq=3, runner="d1", timestamp="2026-01-01T00:00:02.000Z", **LINEAGE))
    skipped = dict(ev.complete(sessionId=SID, seq=2, status="skipped", durationMs=0, errorCode="skipped-duplicate",
                               error="Session h1 is already running", duplicateOf="h1",
                               timestamp="2026-01-01T00:00:01.000Z"))
    cancelled = dict(ev.complete(sessionId=SID, seq=3, status="cancelled", durationMs=0,
                                 timestamp="2026-01-01T00:00:03.000Z"))
    late_waiting = {**waiting, "seq": 4}
    return {
        "queued": [queued],
        "parked": [queued, waiting],
        "started": [queued, waiting, start],
        "started-then-late-waiting": [queued, waiting, start, late_waiting],
        "cancelled-while-parked": [queued, waiting, cancelled],
        "skipped": [queued, skipped],
        "malformed-waiting": [queued, {**waiting, "waitingFor": "soon"}],
    }


def test_the_fold_sets_and_clears_waiting_for_and_keeps_duplicate_of() -> None:
    views = {name: build_view(events) for name, events in fold_cases().items()}
    assert views["queued"]["waitingFor"] == {"reason": "pending"}
    assert views["parked"]["waitingFor"] == {"reason": "concurrency", "sessionIds": ["h1", "q1"]}
    assert views["parked"]["lastSeq"] == 2 and views["parked"]["status"] == "queued"
    assert "waitingFor" not in views["started"] and views["started"]["status"] == "active"
    assert views["started-then-late-waiting"] == views["started"]  # a running session never waits again
    assert "waitingFor" not in views["cancelled-while-parked"]
    assert views["skipped"]["duplicateOf"] == "h1" and "waitingFor" not in views["skipped"]
    assert summarize(views["skipped"])["duplicateOf"] == "h1"
    assert "duplicateOf" not in summarize(views["started"])
    assert views["malformed-waiting"] == views["queued"]  # not applied: lastSeq stays 1
    assert "sessionIds" not in ev.waiting(sessionId=SID, seq=2, reason="concurrency", sessionIds=[])["waitingFor"]
    with pytest.raises(ValueError, match="reason"):
        ev.waiting(sessionId=SID, seq=2, reason="tired")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")
async def test_reducer_js_folds_waiting_and_duplicates_like_python(daemon: DaemonProcess, browser: Browser) -> None:
    cases = fold_cases()
    expected = {name: {"view": build_view(events), "summary": summarize(build_view(events))}
                for name, events in cases.items()}
    context = await browser.new_context(base_url=daemon.url)
    try:
        page = await context.new_page()
        await page.goto("/")
        got = await page.evaluate("""async (cases) => {
            const R = await import('/assets/js/reducer.js');
            const out = {};
            for (const [name, events] of Object.entries(cases)) {
              const view = R.buildView(events);
              out[name] = { view, summary: R.summarize(view) };
            }
            return out;
        }""", cases)
    finally:
        await context.close()
    assert got == json.loads(json.dumps(expected))
