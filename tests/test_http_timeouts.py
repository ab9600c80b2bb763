"""Slow and vanishing HTTP clients (issue #19, low item): read deadlines for headers and bodies, and a client that
leaves mid-body is no internal error.

A real daemon with the real defaults for the attack itself; an in-process daemon behind the same uvicorn protocol
with short deadlines for the finer rules. Pacing a deliberately slow client is the behaviour under test; every
wait for the server polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from atlas.api.app import create_app
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.inproc import running

TRIGGER = "/api/workspaces/core/signals/echo?nowait=true"
HEAD = f"POST {TRIGGER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
CLOSE_BOUND_S = 40.0
"""Liveness bound: the defaults cut these clients off after about 10 s; before the fix they stayed forever."""


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, data: bytes) -> bool:
    """Send what the slow client has to say; False once the server has closed the connection."""
    try:
        sock.send(data)
    except (BrokenPipeError, ConnectionResetError, BlockingIOError):
        return False
    return True


def _error_code(response: bytes) -> str | None:
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 408 "):
        return None
    return str(json.loads(body)["error"]["code"])


def test_slow_clients_are_cut_off_and_the_daemon_stays_responsive(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"]).start()
    try:
        port = int(d.url.rsplit(":", 1)[1])
        kinds = {
            "silent": b"",  # connects and says nothing
            "slow-headers": HEAD.encode(),  # then one more header line a second, never the blank line
            "stalled-body": (HEAD + "Content-Length: 1000\r\n\r\n").encode() + b'{"payload": ',
            "slow-body": (HEAD + "Content-Length: 100000\r\n\r\n").encode() + b'{"payload": {"text": "',
        }
        conns: dict[socket.socket, str] = {}
        for kind, first in kinds.items():
            for _ in range(25):
                sock = _connect(port)
                if first:
                    _send(sock, first)
                conns[sock] = kind
        received: dict[socket.socket, bytes] = dict.fromkeys(conns, b"")
        closed: set[socket.socket] = set()
        t0 = time.monotonic()
        health = httpx.get(d.url + "/health", timeout=2)  # the slow clients take nothing from the others
        assert health.status_code == 200 and health.json()["status"] == "ok"
        next_trickle = t0 + 1.0
        while len(closed) < len(conns):
            assert time.monotonic() - t0 < CLOSE_BOUND_S, \
                f"still open after {CLOSE_BOUND_S:g}s: {sorted({conns[s] for s in conns if s not in closed})}"
            open_ = [s for s in conns if s not in closed]
            readable, _, _ = select.select(open_, [], [], 0.5)
            for sock in readable:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    closed.add(sock)
            if time.monotonic() >= next_trickle:
                next_trickle += 1.0
                for sock in open_:
                    if sock not in closed and conns[sock] in ("slow-headers", "slow-body"):
                        _send(sock, b"X-Slow: 1\r\n" if conns[sock] == "slow-headers" else b"a")
        for sock, kind in conns.items():
            assert _error_code(received[sock]) == "request_timeout", (kind, received[sock][:300])
            sock.close()
        health = httpx.get(d.url + "/health", timeout=2)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        r = httpx.post(d.url + TRIGGER, json={"payload": {"n": 1}}, timeout=10)
        assert r.status_code == 202, r.text
        log = d.log()
        assert "internal error" not in log and "Traceback" not in log, log
    finally:
        assert d.stop() == 0, d.log()


@contextlib.asynccontextmanager
async def serving(home: Path, http: type[asyncio.Protocol] | str) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """The real app on an in-process daemon, served by uvicorn with the given HTTP protocol."""
    async with running(home, [FIXTURES / "core"]) as daemon:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        server = uvicorn.Server(uvicorn.Config(create_app(daemon), loop="none", http=http, lifespan="off",
                                               access_log=False, log_level="warning", timeout_graceful_shutdown=2))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await until(lambda: server.started, "uvicorn to start")
            yield sock.getsockname()[1], server
        finally:
            server.should_exit = True
            await task


async def until(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_client_gone_mid_body_is_no_internal_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with serving(tmp_path / "home", "httptools") as (port, server):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((HEAD + "Content-Length: 1000\r\n\r\n").encode() + b'{"payload": ')
        await writer.drain()
        await until(lambda: server.server_state.tasks, "the request to reach the app")
        writer.close()
        await writer.wait_closed()
        await until(lambda: not server.server_state.tasks, "the request to end")
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}{TRIGGER}", json={"payload": {"n": 1}})
        assert r.status_code == 202, r.text
    bad = [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info]
    assert not bad, [(rec.name, rec.getMessage(), rec.exc_info and rec.exc_info[0]) for rec in bad]


def _fast_protocol() -> type[asyncio.Protocol]:
    from atlas.cli.serve import TimedHttpToolsProtocol

    class Fast(TimedHttpToolsProtocol):
        header_timeout_s = 1.0
        body_timeout_s = 1.0
        body_min_rate = 100.0

    return Fast


async def test_a_slow_but_steady_body_is_not_cut_off(tmp_path: Path) -> None:
    """Each chunk buys time at the minimum rate: 50 bytes every 0.25 s (200 B/s) for 2 s passes the 1 s start."""
    payload = b'{"payload": {"text": "' + b"x" * 370 + b'"}}'
    async with serving(tmp_path / "home", _fast_protocol()) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((HEAD + f"Content-Length: {len(payload)}\r\n\r\n").encode())
        for i in range(0, len(payload), 50):
            writer.write(payload[i:i + 50])
            await writer.drain()
            await asyncio.sleep(0.25)  # pacing the slow client, not synchronisation
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 202 "), head
        writer.close()


async def test_the_header_deadline_applies_to_each_request_of_a_connection(tmp_path: Path) -> None:
    async with serving(tmp_path / "home", _fast_protocol()) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"payload": {"n": 1}}'
        writer.write((HEAD + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 202 "), head
        lengths = [line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")]
        await reader.readexactly(int(lengths[0]))
        writer.write(HEAD.encode())  # a second request whose headers never end
        rest = await asyncio.wait_for(reader.read(), 10)  # read() returns at EOF: the server closed
        assert _error_code(rest) == "request_timeout", rest
        writer.close()
