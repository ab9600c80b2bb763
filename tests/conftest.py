"""Shared fixtures: one real daemon per test module for the API tests (starting one costs ~1 s), and the event loops.

Async tests run on uvloop, the loop `atlasd` runs on (`cli/serve.py`), so an in-process daemon in a test behaves
like the real one: two uvloop-only bugs (a stdin write after the child exited, a NUL in an argv element) once got
through a suite that ran on the standard loop only. Tests marked `both_loops` run twice, on uvloop and on the
standard library's loop, for the code whose behaviour differs between them (subprocesses, cancellation, streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.fake_models import FakeModels, fake_models
from tests.pg import PgServer, PgUnavailable, start_pg_server

pytest_plugins = ["tests.browser"]  # browser, context, page, client: the UI tests' fixtures

_UVLOOP: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": uvloop.new_event_loop}
_BOTH: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {**_UVLOOP, "asyncio": asyncio.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run this async test on uvloop and on the standard asyncio loop")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return _BOTH if item.get_closest_marker("both_loops") is not None else _UVLOOP


@pytest.fixture
def fake() -> Iterator[FakeModels]:
    """A scripted model server of the test's own (modules that share one across their tests define a module-scoped
    `fake` of their own, which wins)."""
    with fake_models() as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("atlas-home")
    proc = DaemonProcess(home, [FIXTURES / "core", FIXTURES / "other"]).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One private PostgreSQL server per pytest session, started by the first test that asks for it (tests/pg.py).

    Missing binaries fail the test with the fix (`make postgres`), never skip it: a skipped PostgreSQL test would
    hide that the shared read model went untested.
    """
    try:
        server = start_pg_server()
    except PgUnavailable as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    yield server
    server.close()


@pytest.fixture
def pg_dsn(pg: PgServer) -> str:
    """A fresh empty database on the session's server, for one test (databases are cheap; servers are not)."""
    return pg.create_database()
