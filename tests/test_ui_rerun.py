"""Re-run from the web UI (issue #16, item 4; "Done when": a failed run can be re-run from the UI with its input).

Playwright drives Debian's Chromium (the browser fixture of tests/test_ui.py) against a real daemon with the
`tests/fixtures/ui` workspace. Pinned here: a finished run's page has a Re-run button (a live one has Cancel
instead); it opens the run dialog pre-filled with the run's payload — the schema's fields for a signal with a
schema (keys without a field are sent as they were), one JSON box for a signal without — and sends it to
`POST /api/sessions/<id>/rerun` with `X-Atlas-Client: ui`; the page lands on the new run, which links back to the
one it re-ran; a run started from the UI is recorded as `trigger: ui`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.browser import ui_daemon
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_ui import CHROMIUM, fill_deploy, open_dialog, shot, trigger, view_of, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from ui_daemon(tmp_path_factory, "atlas-ui-rerun", [FIXTURES / "ui", FIXTURES / "other"])





def is_rerun_post(sid: str) -> Any:
    return lambda r: r.request.method == "POST" and r.url.endswith(f"/api/sessions/{sid}/rerun")


async def test_a_failed_run_is_re_run_from_its_page_with_its_input(page: Page, client: httpx.AsyncClient) -> None:
    payload = {"service": "api", "attempt": 1, "labels": {"team": "infra"}}
    old = (await trigger(client, "broken", payload))["sessionId"]
    assert (await wait_status(client, old, TERMINAL))["status"] == "failed"

    await page.goto(f"/sessions/{old}")
    await expect(page.locator(".run-status")).to_have_text("failed")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Broken job")  # the job's name is loaded
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    await page.get_by_role("button", name="Re-run", exact=True).click()
    dialog = page.get_by_role("dialog", name="Re-run Broken job?")
    await expect(dialog).to_be_visible()
    # `broken` has no schema: one JSON box holds the original payload.
    box = dialog.get_by_role("textbox", name="Payload (JSON)")
    assert json.loads(await box.input_value()) == payload
    await shot(page, "rerun-01-dialog", full_page=False)

    async with page.expect_response(is_rerun_post(old)) as answer:
        await dialog.get_by_role("button", name="Start re-run").click()
    response = await answer.value
    assert response.status == 202, await response.text()
    accepted = await response.json()
    assert json.loads(response.request.post_data or "") == {"payload": payload}
    assert (await response.request.all_headers())["x-atlas-client"] == "ui"

    new = accepted["sessionId"]
    await expect(page).to_have_url(re.compile(rf"/sessions/{new}$"))
    await expect(page.locator("#session-id")).to_have_text(new)
    link = page.locator("#rerun-of")
    await expect(link).to_have_text(old[:8])
    await expect(link).to_have_attribute("href", f"/sessions/{old}")
    await expect(page.locator(".run-status")).to_have_text("failed", timeout=30_000)
    await expect(page.get_by_role("button", name="Re-run", exact=True)).to_be_visible()
    await shot(page, "rerun-02-new-run")
    view = await view_of(client, new)
    assert (view["rerunOf"], view["trigger"], view["payload"], view["jobName"]) == (old, "rerun", payload, "broken")

    # The link leads back to the run that was re-run.
    await link.click()
    await expect(page).to_have_url(re.compile(rf"/sessions/{old}$"))
    await expect(page.locator("#session-id")).to_have_text(old)


async def test_re_run_fills_the_schema_form_and_keeps_the_keys_it_has_no_field_for(
        page: Page, client: httpx.AsyncClient) -> None:
    # The first run is started from the UI's own dialog, so it is recorded as `trigger: ui`.
    dialog = await open_dialog(page, "Deploy a service")
    await fill_deploy(dialog, "web", "2")
    await dialog.get_by_role("combobox", name="Region").select_option("eu-west")
    async with page.expect_response(lambda r: r.request.method == "POST" and "/signals/deploy?" in r.url) as answer:
        await dialog.get_by_role("button", name="Start run").click()
    old = (await (await answer.value).json())["sessionId"]
    first = await wait_status(client, old, TERMINAL)
    assert first["trigger"] == "ui" and first["status"] == "completed"
    # A key the form has no field for (sent by an API caller) must survive a re-run from the form.
    api_run = (await trigger(client, "deploy", {"service": "db", "replicas": 1, "ticket": "OPS-7"}))["sessionId"]
    await wait_status(client, api_run, TERMINAL)

    for sid, fields, edit, sent in (
        (old, {"Service": "web", "Replicas": "2"}, "3", {"service": "web", "replicas": 3, "region": "eu-west"}),
        (api_run, {"Service": "db", "Replicas": "1"}, None, {"service": "db", "replicas": 1, "ticket": "OPS-7"}),
    ):
        await page.goto(f"/sessions/{sid}")
        await expect(page.locator(".run-status")).to_have_text("completed")
        await expect(page.get_by_role("heading", level=1)).to_contain_text("Deploy a service")
        await page.get_by_role("button", name="Re-run", exact=True).click()
        dialog = page.get_by_role("dialog", name="Re-run Deploy a service?")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_role("radio")).to_have_count(0)  # the signal is the run's own
        await expect(dialog.get_by_role("textbox", name="Service")).to_have_value(fields["Service"])
        await expect(dialog.get_by_role("spinbutton", name="Replicas")).to_have_value(fields["Replicas"])
        if edit is not None:
            await dialog.get_by_role("spinbutton", name="Replicas").fill(edit)
        async with page.expect_response(is_rerun_post(sid)) as answer:
            await dialog.get_by_role("button", name="Start re-run").click()
        response = await answer.value
        assert response.status == 202, await response.text()
        assert json.loads(response.request.post_data or "") == {"payload": sent}
        new = (await response.json())["sessionId"]
        await expect(page).to_have_url(re.compile(rf"/sessions/{new}$"))
        view = await wait_status(client, new, TERMINAL)
        assert (view["status"], view["rerunOf"], view["payload"]) == ("completed", sid, sent)
