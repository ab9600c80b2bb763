"""Run atlasd in the foreground: start the daemon, then serve HTTP until SIGINT/SIGTERM, then shut down cleanly.

The daemon starts before the HTTP listener, so a client never sees the API before recovery has settled the
previous run (spec §8.1), and start-up errors (no nats-server binary, port taken) are one readable line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys

import uvicorn

from atlas.api.app import create_app
from atlas.bus.server import BusError
from atlas.cli.homelock import HomeLock
from atlas.config.settings import Settings, is_loopback
from atlas.errors import ApiError
from atlas.runtime.daemon import Daemon


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


async def _serve(settings: Settings) -> int:
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = settings.with_overrides(port=port)
    daemon = Daemon(settings)
    try:
        await daemon.start()
    except (BusError, ApiError, OSError) as exc:
        print(f"atlasd: {exc}", file=sys.stderr)
        await daemon.stop()
        return 1
    except Exception as exc:  # anything else at start: one readable line, the details in the log
        logging.getLogger("atlas").debug("start failed", exc_info=exc)
        print(f"atlasd: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        await daemon.stop()
        return 1
    info = {"url": f"http://{settings.host}:{port}", "pid": os.getpid(), "home": str(settings.home)}
    daemon_json = settings.home / "daemon.json"
    daemon_json.write_text(json.dumps(info))
    os.chmod(daemon_json, 0o600)
    app = create_app(daemon)
    config = uvicorn.Config(
        app, loop="none", http="httptools", lifespan="off", access_log=False,
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
    lock = lock if lock is not None and lock.held else HomeLock.acquire(settings.home)
    if lock is None:
        print(f"atlasd: another atlasd holds {settings.home}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with lock:
        try:
            import uvloop

            return uvloop.run(_serve(settings))
        except ImportError:
            return asyncio.run(_serve(settings))
