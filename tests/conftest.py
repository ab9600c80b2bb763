"""Shared fixtures: one real daemon per test module for the API tests (starting one costs ~1 s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import FIXTURES, DaemonProcess


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("atlas-home")
    proc = DaemonProcess(home, [FIXTURES / "core", FIXTURES / "other"]).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"
