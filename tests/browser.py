"""The browser fixtures every UI test file shares (a pytest plugin, loaded by tests/conftest.py).

Playwright's async API drives Debian's Chromium. A UI test module says which daemon its pages talk to: a
module-scoped `ui` fixture (`ui_daemon` starts one), or `ui_url` (the base URL) for a daemon of another name.
`context` (a 1280×900 browser context that fails the test on any uncaught page error), `page` and `client` (an
httpx client on the same daemon) then follow from it; a module needing other context options overrides
`context` itself, with `new_context`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.daemon_proc import DaemonProcess

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.access(p, os.X_OK)), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def ui_daemon(tmp_path_factory: pytest.TempPathFactory, name: str, workspaces: list[Path]) -> Iterator[DaemonProcess]:
    """A module's UI daemon (yield from it in a module-scoped `ui` fixture): stopped at the end, cleanly."""
    proc = DaemonProcess(tmp_path_factory.mktemp(name), workspaces).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


@pytest.fixture
def ui_url(ui: DaemonProcess) -> str:
    """The base URL the pages and the client use: the module's `ui` daemon unless the module says otherwise."""
    return ui.url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: run `make chromium` (Debian package)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def new_context(browser: Browser, base_url: str, **options: Any) -> tuple[BrowserContext, list[str]]:
    """A context on `base_url` (1280×900 unless `options` say otherwise) and the list its pages' uncaught errors
    go to."""
    ctx = await browser.new_context(base_url=base_url, **{"viewport": {"width": 1280, "height": 900}, **options})
    errors: list[str] = []
    ctx.on("page", lambda p: p.on("pageerror", lambda exc: errors.append(f"{p.url}: {exc}")))
    return ctx, errors


@pytest.fixture
async def context(browser: Browser, ui_url: str) -> AsyncIterator[BrowserContext]:
    ctx, errors = await new_context(browser, ui_url)
    yield ctx
    await ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@pytest.fixture
async def client(ui_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ui_url, timeout=60) as c:
        yield c
