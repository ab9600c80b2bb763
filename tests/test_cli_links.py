"""Links between the CLI and the web UI (issue #16, item 8 and the last point of item 7).

`signal trigger` and `sessions show` print the run's UI URL after the correlationId and the sessionId; the API
finds sessions by an id prefix (`sessionIdPrefix`); the UI resolves the 8-character ids the CLI prints, and
links the runs of an ambiguous prefix. A real daemon, the CLI as a subprocess, the UI in Chromium.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.daemon_proc import DaemonProcess
from tests.test_cli import TERMINAL, UUID, atlas, clean_env, ids_from, nowait, wait_status


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An ATLAS_HOME without daemon.json: only --url decides which daemon the CLI talks to."""
    return clean_env(tmp_path_factory.mktemp("cli-links-home"))


def prefix_lookup(d: DaemonProcess, prefix: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{d.url}/api/sessions", params={"sessionIdPrefix": prefix, **params}, timeout=10)


# ---------------------------------------------------------------- CLI: the run's URL


def test_trigger_prints_the_run_url_after_the_ids(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--nowait")
    assert r.returncode == 0, r.stderr
    _, sid = ids_from(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[2:] == [f"url            {daemon.url}/sessions/{sid}"]
    page = httpx.get(lines[2].split()[1], timeout=10)  # the UI's page for it (the SPA's index.html)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]

    waited = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", '{"n": 1}')
    assert waited.returncode == 0, waited.stderr
    _, sid = ids_from(waited.stdout)
    assert waited.stdout.splitlines()[2] == f"url            {daemon.url}/sessions/{sid}"


def test_trigger_json_output_is_unchanged(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--nowait", "--json")
    assert r.returncode == 0, r.stderr
    assert "/sessions/" not in r.stdout and "url" not in r.stdout


def test_sessions_show_prints_the_run_url_after_the_correlation_id(daemon: DaemonProcess,
                                                                   env: dict[str, str]) -> None:
    accepted = nowait(daemon, "echo", {"n": 2})
    wait_status(daemon, accepted["sessionId"], TERMINAL)
    r = atlas(daemon, env, "sessions", "show", accepted["sessionId"][:8])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index(f"correlationId  {accepted['correlationId']}")
    assert lines[at - 1] == f"session        {accepted['sessionId']}"
    assert lines[at + 1] == f"url            {daemon.url}/sessions/{accepted['sessionId']}"


# ---------------------------------------------------------------- API: sessionIdPrefix


def test_sessions_can_be_found_by_an_id_prefix(daemon: DaemonProcess) -> None:
    accepted = nowait(daemon, "echo", {"n": 3})
    sid = accepted["sessionId"]
    found = prefix_lookup(daemon, sid[:8], limit=2)
    assert found.status_code == 200, found.text
    assert [s["sessionId"] for s in found.json()["sessions"]] == [sid]
    assert [s["sessionId"] for s in prefix_lookup(daemon, sid).json()["sessions"]] == [sid]
    # Exact: '_' is no wildcard (it would be in SQL LIKE).
    assert prefix_lookup(daemon, sid[:7] + "_").json() == {"sessions": []}
    assert prefix_lookup(daemon, "zzzzzzzz").json() == {"sessions": []}
    # A prefix combines with the other filters (AND).
    assert prefix_lookup(daemon, sid[:8], workspaceId="other").json()["sessions"] == []


def test_a_bad_prefix_is_invalid_query(daemon: DaemonProcess) -> None:
    r = prefix_lookup(daemon, "abc%")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_query"
    assert r.json()["error"]["details"][0]["path"] == "sessionIdPrefix"


# ---------------------------------------------------------------- UI: short ids


async def test_the_ui_resolves_the_cli_short_id(daemon: DaemonProcess, browser: Browser) -> None:
    accepted = nowait(daemon, "echo", {"n": 4})
    sid = accepted["sessionId"]
    wait_status(daemon, sid, TERMINAL)
    context = await browser.new_context(base_url=daemon.url)
    errors: list[str] = []
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"/sessions/{sid[:8]}")
    await expect(page).to_have_url(re.compile(rf"/sessions/{sid}$"))
    await expect(page.locator("#session-id")).to_have_text(sid)

    await page.goto("/sessions/ffffffff-ffff")  # no session id starts with this
    await expect(page.get_by_role("heading", name="Run not found")).to_be_visible()
    await expect(page.get_by_text("No run id starts with ffffffff-ffff.")).to_be_visible()
    assert re.search(UUID, page.url) is None
    await context.close()
    assert not errors, errors


async def test_the_ui_lists_the_runs_an_ambiguous_prefix_matches(daemon: DaemonProcess, browser: Browser) -> None:
    """Runs are created until two ids share their first character (17 are sure to); that character is then an
    ambiguous prefix, and its page links every run it matches (the newest ten)."""
    by_first: dict[str, list[str]] = {}
    for _ in range(17):
        sid = nowait(daemon, "echo", {"n": 5})["sessionId"]
        by_first.setdefault(sid[0], []).append(sid)
        if len(by_first[sid[0]]) == 2:
            break
    prefix, pair = next((first, sids) for first, sids in by_first.items() if len(sids) == 2)
    for sid in pair:
        wait_status(daemon, sid, TERMINAL)
    matching = len(prefix_lookup(daemon, prefix, limit=11).json()["sessions"])
    context = await browser.new_context(base_url=daemon.url)
    page = await context.new_page()
    await page.goto(f"/sessions/{prefix}")
    await expect(page.get_by_role("heading", name="Ambiguous run id")).to_be_visible()
    await expect(page.get_by_text(f"More than one run id starts with {prefix}:")).to_be_visible()
    candidates = page.get_by_role("list", name=f"Runs whose id starts with {prefix}").get_by_role("listitem")
    await expect(candidates).to_have_count(min(matching, 10))
    for sid in pair:
        await expect(candidates.filter(has=page.get_by_role("link", name=sid, exact=True))).to_contain_text("completed")
    await page.get_by_role("link", name=pair[0], exact=True).click()
    await expect(page).to_have_url(re.compile(rf"/sessions/{pair[0]}$"))
    await expect(page.locator("#session-id")).to_have_text(pair[0])
    await context.close()
