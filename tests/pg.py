"""A private PostgreSQL server for the tests and benches: Debian's PostgreSQL 15, started in a temporary directory.

Why our own server rather than the cluster the Debian package may have started on port 5432: the tests must pass on
a machine where no service runs (a container without an init system, CI), must not share state with anything else,
and the fault tests stop and restart the server under load, which nobody may do to a shared one. `initdb` takes
about a second, so a pytest session starts one server and gives each test a fresh database (`create_database`).

The server refuses to run as root and the tests run as root, so when we are root the server's commands run as the
`postgres` user (`runuser`), in a directory under /tmp that this user owns.

Durability against an OS crash is switched off (`fsync=off`, `full_page_writes=off`): a test server's data dies
with the test session anyway. Durability against a crash of the server itself is kept: `synchronous_commit` stays
on, because with it off a commit is acknowledged before its WAL leaves PostgreSQL's shared memory, so
`stop("immediate")` (the fault tests' crash) would lose rows the daemon was told were written. With `fsync=off` a
synchronous commit costs one write() to the kernel's page cache, which survives the server's death.

No pytest import here: the benches use this module too (`with pg_server() as pg:`).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

#: Where Debian's postgresql-15 puts its server binaries; `ATLAS_PG_BINDIR` points elsewhere (another version, a
#: source build).
DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
SERVER_USER = "postgres"
START_TIMEOUT_S = 60.0


class PgUnavailable(RuntimeError):
    """The PostgreSQL binaries (or the `postgres` user they must run as) are missing: `make postgres` installs them."""


def pg_bindir() -> Path:
    """The directory of initdb/pg_ctl/postgres; raises PgUnavailable with the fix when they are not installed."""
    bindir = Path(os.environ.get("ATLAS_PG_BINDIR", DEFAULT_BINDIR))
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not os.access(bindir / name, os.X_OK)]
    if missing:
        raise PgUnavailable(
            f"PostgreSQL server binaries not found in {bindir} (missing: {', '.join(missing)}). "
            "Run `make postgres` (installs Debian's postgresql package) or set ATLAS_PG_BINDIR."
        )
    return bindir


def _free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the kernel picks it; the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One private PostgreSQL server: a data directory, a TCP port on 127.0.0.1, a Unix socket in the same dir.

    `stop()`/`start()` keep the data directory and the port, for the fault tests (PostgreSQL down under load, then
    back); `close()` ends the server for good and removes everything.
    """

    host: str
    port: int

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or pg_bindir()
        self.host = "127.0.0.1"
        self.port = 0
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                self._user = pwd.getpwnam(SERVER_USER)
            except KeyError as exc:
                raise PgUnavailable(
                    f"no `{SERVER_USER}` user to run PostgreSQL as (it refuses root). Run `make postgres`."
                ) from exc
        # /tmp, not the caller's TMPDIR: the `postgres` user must be able to reach the directory.
        self.base = Path(tempfile.mkdtemp(prefix="atlas-pg-", dir="/tmp" if self._as_root else None))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.sockdir.mkdir()
        if self._as_root:
            for path in (self.base, self.sockdir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._running = False
        self._closed = False

    # -- commands -----------------------------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run one server binary, as `postgres` when we are root; raises with its output when it fails."""
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(
            argv, cwd=self.base, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def init(self) -> PgServer:
        """initdb: trust authentication (a test server on loopback only), superuser `postgres`, UTF8, C collation."""
        self._run(
            "initdb", "-D", str(self.datadir), "-A", "trust", "-U", SERVER_USER,
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        return self

    def start(self) -> None:
        """Start the server (again, after `stop()`: same data, same port) and wait until it accepts connections."""
        if self._running:
            return
        fresh_port = not self.port
        for attempt in range(3):
            if fresh_port:
                self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.sockdir} -h {self.host}"
                " -c fsync=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                    "-t", str(int(START_TIMEOUT_S)), "-o", options,
                )  # fmt: skip
                break
            except RuntimeError:
                # Another process may have bound the port between `_free_port` and the server's bind: pick again.
                if not fresh_port or attempt == 2 or "already in use" not in self.log_tail():
                    raise
        self._running = True
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll a real connection with a deadline: `pg_ctl -w` has already waited, but only on the socket file."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections: {exc}\n{self.log_tail()}") from exc
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: `fast` ends sessions cleanly, `immediate` is a crash
        (recovery at start).
        """
        if not self._running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w")
        self._running = False

    def close(self) -> None:
        """Stop the server at once and remove its directory (idempotent; also registered with atexit)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for one database of this server (no password: trust authentication)."""
        return f"postgresql://{SERVER_USER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database (a random name unless given); returns its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    @property
    def running(self) -> bool:
        return self._running


def start_pg_server(bindir: Path | None = None) -> PgServer:
    """initdb + start a private server; it is closed at interpreter exit if the caller does not close it first."""
    server = PgServer(bindir)
    atexit.register(server.close)
    try:
        server.init()
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@contextmanager
def pg_server(bindir: Path | None = None) -> Iterator[PgServer]:
    """`with pg_server() as pg:` a private server for the block, removed afterwards."""
    server = start_pg_server(bindir)
    try:
        yield server
    finally:
        server.close()
