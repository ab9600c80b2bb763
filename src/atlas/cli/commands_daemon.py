"""`atlas daemon start|stop|status|restart` (spec §11, §8.4).

`start` runs atlasd in the foreground; `start --detach` re-runs `atlas daemon start` (without --detach) as a
detached child in its own session, logging to `$ATLAS_HOME/daemon.log` with its pid in `$ATLAS_HOME/daemon.pid`,
and returns once `/health` answers `ok`. The other commands talk to the daemon over HTTP only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import httpx
import typer

from atlas.cli.client import (
    EXIT_ERROR,
    EXIT_OK,
    Api,
    CliError,
    Target,
    atlas_home,
    read_daemon_json,
    resolve_target,
)
from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, handle_errors
from atlas.cli.homelock import HomeLock, lock_holder
from atlas.cli.render import Output, fmt_duration, local_time, session_label, short_id
from atlas.config.settings import Settings, is_loopback

daemon_app = typer.Typer(help="Run and control the atlas daemon (atlasd).", no_args_is_help=True)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

HomeOpt = Annotated[Path | None, typer.Option(
    "--home", metavar="DIR", help="State directory (default ATLAS_HOME, else ~/.atlas): where daemon.json, "
    "daemon.pid and daemon.log live.", show_default=False)]


# -------------------------------------------------------------------- process helpers


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie — exited, not yet reaped by its parent — counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _health(url: str, token: str | None = None, timeout: float = 2.0) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        body = httpx.get(url.rstrip("/") + "/health", timeout=timeout, headers=headers).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def running_on_home(home: Path) -> dict[str, Any] | None:
    """The daemon.json of a live daemon on `home` (its pid runs and its /health answers), else None."""
    info = read_daemon_json(home)
    if info is None or not isinstance(info.get("pid"), int) or not pid_alive(info["pid"]):
        return None
    health = _health(info["url"], os.environ.get("ATLAS_TOKEN"))
    return info if health is not None and health.get("status") in ("ok", "starting", "degraded") else None


def _is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


# -------------------------------------------------------------------- start


def start_detached(settings: Settings, workspaces: list[Path], nats_url: str | None) -> dict[str, Any]:
    """Spawn `atlas daemon start …` in the background and wait for /health ok; returns {url, pid, home, log}."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "atlas.cli.main", "daemon", "start", "--home", str(home),
            "--host", settings.host, "--port", str(settings.port)]
    for ws in workspaces:
        argv += ["--workspace", str(ws)]
    if nats_url:
        argv += ["--nats-url", nats_url]
    log_path = home / "daemon.log"
    pid_path = home / "daemon.pid"
    lock = HomeLock.acquire(home)
    if lock is None:
        _home_taken(home)
    with lock:
        (home / "daemon.json").unlink(missing_ok=True)  # stale: the free lock says no daemon runs on this home
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        log.write(f"--- atlas daemon start --detach, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    fd = os.open(pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        code = proc.poll()
        if code is not None:
            pid_path.unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").splitlines()[-8:]
            raise CliError(EXIT_ERROR, "start_failed", f"the daemon exited with code {code} while starting; "
                           f"see {log_path}", details=tail)
        info = read_daemon_json(home)
        if info is not None and info.get("pid") == proc.pid:
            health = _health(info["url"], settings.token, timeout=1.0)
            if health is not None and health.get("status") == "ok":
                return {"url": info["url"], "pid": proc.pid, "home": str(home), "log": str(log_path),
                        "pidFile": str(pid_path)}
        if time.monotonic() > deadline:
            raise CliError(EXIT_ERROR, "start_timeout",
                           f"the daemon (pid {proc.pid}) did not report healthy within {START_TIMEOUT_S:.0f}s; "
                           f"it may still be starting, see {log_path}")
        time.sleep(0.05)


def _home_taken(home: Path) -> NoReturn:
    """Another process holds the home's lock but no healthy daemon answers for it: it is still starting (or
    stopping). Touch nothing and say so; waiting for it is the caller's choice, not a silent retry here."""
    pid = lock_holder(home)
    holder = f"another atlasd (pid {pid})" if pid is not None else "another atlasd"
    raise CliError(EXIT_ERROR, "daemon_starting",
                   f"{holder} holds {home} but is not serving (it is still starting, or stopping); "
                   "nothing was changed",
                   hint="run `atlas daemon status` in a moment")


def _print_started(out: Output, started: dict[str, Any]) -> None:
    if out.json:
        out.emit_json(started)
        return
    out.print(f"atlasd running at {started['url']} (pid {started['pid']})")
    out.print(f"  log:  {started['log']}")
    out.print("  stop: atlas daemon stop")


@daemon_app.command("start")
@handle_errors
def daemon_start(
    host: Annotated[str | None, typer.Option(
        metavar="HOST", help="Address to bind (default 127.0.0.1, ATLAS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(
        metavar="PORT", help="Port to listen on (default 8080, ATLAS_PORT; 0 = any free).")] = None,
    home: Annotated[Path | None, typer.Option(
        metavar="DIR", help="State directory (default ~/.atlas, ATLAS_HOME).")] = None,
    workspace: Annotated[list[Path], typer.Option(
        "--workspace", "-w", metavar="PATH", help="Workspace directory to load (repeatable).")] = [],  # noqa: B006
    nats_url: Annotated[str | None, typer.Option(
        metavar="URL", help="External NATS URL(s); default: start an embedded server.")] = None,
    database_url: Annotated[str | None, typer.Option(
        metavar="URL", help="PostgreSQL read model shared by daemons (postgresql://…, ATLAS_DATABASE_URL); "
        "default: SQLite under the home.")] = None,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Run in the background (log in $ATLAS_HOME/daemon.log, pid in daemon.pid); return once "
        "/health is ok and print the URL and pid.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run the daemon in the foreground until Ctrl-C or SIGTERM, or in the background with --detach.

    The foreground daemon shuts down gracefully on Ctrl-C or SIGTERM. --detach starts it as a background process
    (log in $ATLAS_HOME/daemon.log, pid in $ATLAS_HOME/daemon.pid), waits until /health is ok, then prints its URL
    and pid. If a daemon already runs on the same home, prints its status and exits 0; if one is still starting
    there, exits 1 and changes nothing.
    """
    settings = Settings.from_env().with_overrides(
        host=host, port=port, home=home.expanduser().resolve() if home else None, nats_url=nats_url,
        workspaces=tuple(p.expanduser().resolve() for p in workspace) or None, database_url=database_url,
    )
    if database_url:  # a detached child reads it from its environment: a password stays out of `ps`
        os.environ["ATLAS_DATABASE_URL"] = database_url
    out = Output(json_out)
    lock = HomeLock.acquire(settings.home)
    if lock is None:
        info = running_on_home(settings.home)
        holder = lock_holder(settings.home)
        if info is None or (holder is not None and info["pid"] != holder):
            _home_taken(settings.home)  # the holder is not serving yet: a stale daemon.json is not its status
        out.note(f"A daemon is already running on {settings.home} (pid {info['pid']}).")
        with Api(Target(info["url"], settings.token, "daemon.json")) as api:
            show_status(out, api)
        raise typer.Exit(EXIT_OK)
    if detach:
        lock.release()  # the detached child takes it for itself
        _print_started(out, start_detached(settings, [p.expanduser().resolve() for p in workspace], nats_url))
        return
    from atlas.cli.serve import run_daemon

    raise typer.Exit(run_daemon(settings, lock))


# -------------------------------------------------------------------- status


def show_status(out: Output, api: Api) -> dict[str, Any]:
    status = api.get("/api/daemon/status")
    if out.json:
        out.emit_json(status)
        return status
    workspaces = api.get("/api/workspaces")
    live = api.list_sessions(status="queued,active", limit=50)
    nats = status.get("nats") or {}
    mode = nats.get("mode", "?")
    nats_text = f"embedded ({nats.get('url', '')})" if mode == "embedded" else f"external {nats.get('url', '')}"
    sessions = status.get("sessions") or {}
    ws_text = ", ".join(f"{w['id']} ({w.get('status', '?')})" for w in workspaces) or "none"
    rss = (status.get("memoryUsage") or {}).get("rss")
    out.print(f"atlasd {status.get('version', '?')} {status.get('status', '?')} at {api.url} "
              f"(pid {status.get('pid', '?')})")
    out.fields([
        ("uptime", f"{fmt_duration(float(status.get('uptime') or 0) * 1000)} (since "
                   f"{local_time(status.get('startedAt'), True)})"),
        ("nats", nats_text),
        ("workspaces", f"{len(workspaces)}: {ws_text}"),
        ("sessions", f"{sessions.get('active', 0)} active, {sessions.get('queued', 0)} queued"),
        ("bind", str(status.get("bind", ""))),
        ("daemonId", str(status.get("daemonId", ""))),
        ("memory", f"{rss / 1048576:.0f} MiB" if isinstance(rss, int | float) else "-"),
        ("cluster", f"{len(status.get('cluster') or [])} daemon(s)"),
    ])
    if live:
        out.blank()
        out.table(["id", "job", "status", "running for"],
                  [[short_id(s["sessionId"]), session_label(s), s["status"],
                    fmt_duration(_age_ms(s.get("startedAt")))] for s in live])
    return status


def _age_ms(iso: str | None) -> float | None:
    from atlas.cli.render import elapsed_ms

    return elapsed_ms({"startedAt": iso}) if iso else None


@daemon_app.command("status")
@handle_errors
def daemon_status(home: HomeOpt = None, url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Show the daemon's status: uptime, NATS mode, workspaces and active sessions.

    Shows version, pid, uptime, the NATS mode (embedded, or the external URL), the workspaces and the queued and
    active sessions. Exits 3 when no daemon answers. --json prints the /api/daemon/status object.
    """
    out = Output(json_out)
    with Api(resolve_target(url, token, home), timeout=10) as api:
        show_status(out, api)


# -------------------------------------------------------------------- stop


def stop_daemon(out: Output, target: Target, home: Path, force: bool) -> dict[str, Any] | None:
    """Shut the daemon down and wait (≤ 15 s) until it has exited; None when none was running."""
    with Api(target, timeout=10) as api:
        try:
            status = api.get("/api/daemon/status")
        except CliError as err:
            if err.code == "daemon_unreachable":
                return None
            raise
        active = int((status.get("sessions") or {}).get("active", 0))
        if active and not force:
            live = api.list_sessions(status="active", limit=10)
            names = ", ".join(f"{short_id(s['sessionId'])} {session_label(s)}" for s in live)
            raise CliError(EXIT_ERROR, "sessions_active",
                           f"{active} session{'s are' if active != 1 else ' is'} active ({names}); stopping would "
                           f"end {'them' if active != 1 else 'it'} interrupted",
                           hint=f"wait for {'them' if active != 1 else 'it'}, cancel "
                                f"{'them' if active != 1 else 'it'} (atlas sessions cancel ID), or use --force")
        pid = status.get("pid")
        api.post("/api/daemon/shutdown")
    info = read_daemon_json(home)
    local_pid = pid if isinstance(pid, int) and _is_loopback_url(target.url) and info is not None and \
        info.get("pid") == pid else None
    if not out.json:
        out.note(f"Stopping atlasd at {target.url} (pid {pid})…")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        down = _health(target.url, target.token, timeout=1.0) is None
        if down and (local_pid is None or not pid_alive(local_pid)):
            break
        if time.monotonic() > deadline:
            raise CliError(EXIT_ERROR, "stop_timeout",
                           f"the daemon (pid {pid}) did not exit within {STOP_TIMEOUT_S:.0f}s")
        time.sleep(0.05)
    pid_file = home / "daemon.pid"
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file.read_text().strip()) == pid:
            pid_file.unlink()
    return {"stopped": True, "pid": pid, "url": target.url}


@daemon_app.command("stop")
@handle_errors
def daemon_stop(
    force: Annotated[bool, typer.Option(
        "--force", help="Stop even while sessions are active (they end interrupted).")] = False,
    home: HomeOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop the daemon gracefully and wait for it to exit.

    Asks the daemon to shut down (POST /api/daemon/shutdown) and waits up to 15 s for it to exit. Refused (exit
    1) while sessions are active unless --force, since active sessions would end interrupted. Exits 0 when no
    daemon is running.
    """
    out = Output(json_out)
    target = resolve_target(url, token, home)
    stopped = stop_daemon(out, target, atlas_home(home), force)
    if out.json:
        out.emit_json(stopped or {"stopped": False, "url": target.url})
    elif stopped is None:
        out.print(f"No daemon is running at {target.url}.")
    else:
        out.print(f"atlasd stopped (pid {stopped['pid']}).")


# -------------------------------------------------------------------- restart


@daemon_app.command("restart")
@handle_errors
def daemon_restart(
    force: Annotated[bool, typer.Option(
        "--force", help="Restart even while sessions are active (they end interrupted).")] = False,
    home: HomeOpt = None,
    host: Annotated[str | None, typer.Option(metavar="HOST", help="Address to bind (default: as before).")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Port (default: as before).")] = None,
    workspace: Annotated[list[Path], typer.Option(
        "--workspace", "-w", metavar="PATH", help="Also load this workspace directory (repeatable).")] = [],  # noqa: B006
    nats_url: Annotated[str | None, typer.Option(metavar="URL", help="External NATS URL(s).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Restart the daemon in the background on the same home, address and port.

    Stops it as `atlas daemon stop` does (refused while sessions are active unless --force), then starts it as
    `atlas daemon start --detach`. Workspaces persist across restarts. Starts a daemon if none was running.
    """
    out = Output(json_out)
    target = resolve_target(url, token, home)
    home_dir = atlas_home(home)
    if home is None and target.source == "daemon.json":
        info = read_daemon_json(home_dir)
        if info and info.get("home"):
            home_dir = Path(info["home"])
    bind_host = bind_port = None
    with contextlib.suppress(CliError), Api(target, timeout=10) as api:
        bind = str(api.get("/api/daemon/status").get("bind", ""))
        bind_host, _, raw_port = bind.rpartition(":")
        bind_port = int(raw_port) if raw_port.isdigit() else None
    stopped = stop_daemon(out, target, home_dir, force)
    if stopped is not None and not out.json:
        out.note(f"Stopped atlasd (pid {stopped['pid']}).")
    settings = Settings.from_env().with_overrides(
        home=home_dir, host=host or bind_host or None, port=port if port is not None else bind_port,
        nats_url=nats_url)
    started = start_detached(settings, [p.expanduser().resolve() for p in workspace], nats_url)
    if out.json:
        out.emit_json({"stopped": stopped, "started": started})
    else:
        _print_started(out, started)
