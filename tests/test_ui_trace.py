"""The run page shows a traced run's trace id, linked through `ATLAS_TRACE_URL_TEMPLATE` (issue #18).

Playwright drives Chromium against a real daemon that traces (spans exported over OTLP/HTTP to a receiver in this
test, so it stops cleanly) with the `tests/fixtures/ui` workspace.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.test_tracing import _Receiver, serving
from tests.test_ui import CHROMIUM, trigger, wait_status

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is missing: run `make chromium` (Debian package)")

TEMPLATE = "http://jaeger.example:16686/trace/{traceId}"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(_Receiver().handler()) as collector:
        proc = DaemonProcess(tmp_path_factory.mktemp("atlas-ui-trace"), [FIXTURES / "ui", FIXTURES / "other"], env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "ATLAS_TRACE_URL_TEMPLATE": TEMPLATE}).start()
        yield proc
        code = proc.stop()
        assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


async def test_the_run_page_links_the_runs_trace(page: Page, client: httpx.AsyncClient) -> None:
    sid = (await trigger(client, "broken"))["sessionId"]
    view = await wait_status(client, sid, {"failed"})
    trace_id = view["traceId"]
    assert len(trace_id) == 32

    await page.goto(f"/sessions/{sid}")
    await expect(page.locator("#trace-id")).to_have_text(trace_id)
    link = page.locator("#trace-link")
    await expect(link).to_have_attribute("href", TEMPLATE.replace("{traceId}", trace_id))
    await expect(link).to_have_text("Open trace")
