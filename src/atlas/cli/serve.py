"""Run atlasd in the foreground: start the daemon, then serve HTTP until SIGINT/SIGTERM, then shut down cleanly.

The daemon starts before the HTTP listener, so a client never sees the API before recovery has settled the
previous run (spec §8.1), and start-up errors (no nats-server binary, port taken) are one readable line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from atlas.api.app import create_app
from atlas.api.errors import error_body
from atlas.bus.server import BusError
from atlas.cli.homelock import HomeLock
from atlas.config.settings import Settings, is_loopback
from atlas.errors import AtlasError
from atlas.observability.logs import configure_logging, use_redactor
from atlas.runtime.daemon import Daemon

HEADER_TIMEOUT_S = 10.0
#: The cyclic garbage collector's thresholds in the daemon process (CPython 3.11's default: 700, 10, 10). Every
#: trigger allocates thousands of short-lived objects (events, views, dicts of the nats client, spans), so with the
#: default a young collection ran every few triggers and an old one, which walks the daemon's whole heap (stores,
#: caches, the workspaces' configs), every few hundred: measured on the nowait bench, 2,740 → 3,375 accepted/s and
#: 5 % less CPU per session (docs/benchmarks.md). Garbage in cycles now lives a little longer; memory stays bounded.
GC_THRESHOLDS = (20_000, 50, 100)
"""A request's line and headers must arrive within this long (from the connection, or from the request's first
byte on a kept-alive connection): they are a few hundred bytes, so only a slowloris client needs more."""
BODY_TIMEOUT_S = 10.0
"""Time allowed for the body to start arriving once the headers are in, ..."""
BODY_MIN_RATE = 500.0
"""... extended by one second for every this many bytes received, so a large body on a slow but steady link is
never cut off while a trickle of a byte a second is (the scheme of Apache's mod_reqtimeout, `body=10,MinRate=500`)."""

_log = logging.getLogger("atlas.http")


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines for the headers and the body of every request.

    uvicorn times only the idle gap between requests (`timeout_keep_alive`): a client that connects and sends
    nothing, or sends its headers or body a byte at a time, holds a connection (and a file descriptor) forever,
    so a few hundred of them starve the daemon. Here the header phase and the body phase each have a deadline;
    when one passes, the client gets a 408 `request_timeout` error (unless a response is already on its way) and
    the connection is closed. Waiting for the *app* is never timed: once the request is read, the deadline is off.

    The deadline is checked by one timer per connection, armed when the connection opens and afterwards only while
    a request is still incomplete after a read: a request that arrives in one read costs no timer of its own.
    """

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    body_min_rate = BODY_MIN_RATE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: str | None = None  # "headers", "body", or None between requests
        self._read_deadline = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._reading = "headers"  # a client that never sends a byte is timed too
        self._read_deadline = self.loop.time() + self.header_timeout_s
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading is None:
            self._cancel_read_timer()
        elif self._read_timer is None and not self.transport.is_closing():
            self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading is None:  # a later request on a kept-alive connection; the first keeps its deadline
            self._reading = "headers"
            self._read_deadline = self.loop.time() + self.header_timeout_s

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._reading = "body"
        self._read_deadline = self.loop.time() + self.body_timeout_s

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._read_deadline += len(body) / self.body_min_rate

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = None

    def handle_websocket_upgrade(self) -> None:
        self._reading = None  # the transport now belongs to another protocol
        self._cancel_read_timer()
        super().handle_websocket_upgrade()

    def _arm_read_timer(self) -> None:
        delay = max(self._read_deadline - self.loop.time(), 0.0)
        self._read_timer = self.loop.call_later(delay, self._on_read_timer)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _on_read_timer(self) -> None:
        self._read_timer = None
        if self._reading is None or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # We stopped reading (a pipelined request waits, or the app has not taken the body yet): the client
            # is not late, so the clock starts again once it is its turn.
            timeout = self.header_timeout_s if self._reading == "headers" else self.body_timeout_s
            self._read_deadline = self.loop.time() + timeout
        if self._read_deadline > self.loop.time():
            self._arm_read_timer()
            return
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        phase, self._reading = self._reading, None
        cycle = self.cycle
        if phase == "body":  # the cycle is this request's, and its app may be waiting in receive()
            answer = not cycle.response_started
            if not cycle.response_complete:
                # What uvicorn does when the client goes: the app's receive() returns http.disconnect (read_body
                # turns that into a quiet error) and anything it sends from now on is dropped, so nothing can
                # follow our 408 on the wire.
                cycle.disconnected = True
                cycle.message_event.set()
        else:  # headers of a new request; a previous response may still be on its way
            answer = cycle is None or cycle.response_complete
        _log.debug("closing a connection from %s: request %s not received in time", self.client, phase)
        if answer:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def _request_timeout_response() -> bytes:
    body = json.dumps(error_body("request_timeout", "The request was not received in time")).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


_REQUEST_TIMEOUT = _request_timeout_response()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"atlasd: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _cannot_start(exc: Exception) -> int:
    """Start-up failed: one readable line (the details of an unexpected error go to the log); exit status 1."""
    if isinstance(exc, BusError | AtlasError | OSError):
        print(f"atlasd: {exc}", file=sys.stderr)
    else:
        logging.getLogger("atlas").debug("start failed", exc_info=exc)
        print(f"atlasd: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


async def _serve(settings: Settings) -> int:
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = settings.with_overrides(port=port)
    try:
        daemon = Daemon(settings)  # builds every component and opens the read model; nothing runs yet
    except Exception as exc:
        return _cannot_start(exc)
    use_redactor(daemon.templater.redact)  # log lines never show a secret the daemon has seen
    try:
        await daemon.start()
    except Exception as exc:
        await daemon.stop()
        return _cannot_start(exc)
    info = {"url": f"http://{settings.host}:{port}", "pid": os.getpid(), "home": str(settings.home)}
    daemon_json = settings.home / "daemon.json"
    daemon_json.write_text(json.dumps(info))
    os.chmod(daemon_json, 0o600)
    app = create_app(daemon)
    config = uvicorn.Config(
        app, loop="none", http=TimedHttpToolsProtocol, lifespan="off", access_log=False,
        log_level="warning", timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    server = uvicorn.Server(config)
    logging.getLogger("atlas").info("listening on http://%s:%d", settings.host, port)
    loop = asyncio.get_running_loop()
    def request_exit() -> None:
        """Stop serving; open SSE streams end at once (clients resume with Last-Event-ID) so they do not hold
        uvicorn's graceful shutdown for its whole timeout."""
        server.should_exit = True
        streams = getattr(app.state, "streams", None)
        if streams is not None:
            streams.close_all()
        daemon.chat.close_streams()  # chat reply streams too (issue #17)

    daemon.request_shutdown = request_exit
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Our own handlers (uvicorn's re-raise the signal after shutdown, which would turn a clean stop into
        # a death by SIGTERM): ask the server to exit, then drain the daemon below.
        loop.add_signal_handler(signum, request_exit)
    try:
        await server._serve(sockets=[sock])
    finally:
        logging.getLogger("atlas").info("shutting down")
        await daemon.stop()
        logging.getLogger("atlas").info("stopped")
        with contextlib.suppress(FileNotFoundError):
            daemon_json.unlink()
    return 1 if daemon.fatal else 0


def run_daemon(settings: Settings, lock: HomeLock | None = None) -> int:
    """Run the daemon on `settings.home`, holding the home's lock (`lock`, else taken here) until it has stopped.

    The lock is released only after the daemon and its nats-server are down, so the next daemon on this home never
    meets a broker that is still ours.
    """
    if not is_loopback(settings.host) and not (settings.token and len(settings.token) >= 32):
        print(f"atlasd: refusing to bind {settings.host} (not loopback) without ATLAS_TOKEN "
              "(at least 32 characters)", file=sys.stderr)
        return 2
    if settings.require_token and not (settings.token and len(settings.token) >= 32):
        print("atlasd: ATLAS_REQUIRE_TOKEN is set: refusing to start without ATLAS_TOKEN (at least 32 characters)",
              file=sys.stderr)
        return 2
    lock = lock if lock is not None and lock.held else HomeLock.acquire(settings.home)
    if lock is None:
        print(f"atlasd: another atlasd holds {settings.home}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)  # text, or JSON lines (ATLAS_LOG_FORMAT)
    gc.set_threshold(*GC_THRESHOLDS)
    # the model and MCP SDKs' HTTP clients log every request at INFO: one line per model turn is noise
    for noisy in ("httpx2", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    with lock:
        try:
            import uvloop

            return uvloop.run(_serve(settings))
        except ImportError:
            return asyncio.run(_serve(settings))
