"""One daemon per home (issue #19, bug 3): `atlas daemon start` takes an OS lock on `$ATLAS_HOME` before it touches
anything there, so a second start on the same home can never stop the first one's nats-server as a "leftover",
rewrite its token, or put a second broker on its JetStream store.

Real daemons in child processes, the real nats-server, real HTTP; every wait polls with a deadline.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for

ROUNDS = 5


def _env() -> dict[str, str]:
    env = {**os.environ, "ATLAS_LOG_LEVEL": "info", "ATLAS_SHUTDOWN_GRACE": "1s"}
    env.pop("ATLAS_NATS_URL", None)
    return env


def _spawn(home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`atlas daemon start --home HOME --port 0` in the foreground, its output to `log`."""
    args = [ATLAS, "daemon", "start", "--home", str(home), "--port", "0", "--workspace", str(FIXTURES / "core")]
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)
    return proc.returncode


def _servers_on_store(home: Path) -> list[tuple[int, int]]:
    """(pid, ppid) of every live nats-server whose command line names this home's config or store."""
    ours = {str(home / "nats" / "nats.conf"), str(home / "nats")}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if not argv or not argv[0].endswith(b"nats-server") or fields[0] in ("Z", "X"):
            continue
        if any(arg.decode(errors="replace") in ours for arg in argv[1:]):
            found.append((int(entry.name), int(fields[1])))
    return found


def _daemon_json(home: Path) -> dict[str, object] | None:
    try:
        info = json.loads((home / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _health(url: str) -> str | None:
    try:
        return str(httpx.get(url + "/health", timeout=2).json().get("status"))
    except (httpx.HTTPError, ValueError):
        return None


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every daemon a test starts; whatever is still running at the end is stopped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        _stop(proc)


def _race_once(tmp_path: Path, home: Path, round_: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """Two starts on `home` at the same instant: exactly one serves, alone on the store, and keeps working."""
    logs = [tmp_path / f"round{round_}-a.log", tmp_path / f"round{round_}-b.log"]
    pair = [_spawn(home, logs[0]), _spawn(home, logs[1])]
    procs.extend(pair)
    # Exactly one of the two gives way; before the home lock both came up and wrecked each other.
    wait_for(lambda: any(p.poll() is not None for p in pair), 60, what=f"round {round_}: one start to give way")
    loser_i = 0 if pair[0].poll() is not None else 1
    loser, survivor = pair[loser_i], pair[1 - loser_i]
    said = logs[loser_i].read_text(errors="replace")
    assert survivor.poll() is None, f"round {round_}: both exited:\n{said}\n{logs[1 - loser_i].read_text()}"
    if loser.returncode == 0:
        assert "already running" in said, said  # the holder was healthy: its status, exit 0 (spec §11)
        assert "uptime" in said, said
    else:
        assert "is still starting" in said, said  # the holder was starting: a clear message, non-zero
        assert "Traceback" not in said, said

    info = wait_for(lambda: (i := _daemon_json(home)) and i.get("pid") == survivor.pid and i, 60,
                    what="the survivor's daemon.json")
    url = str(info["url"])
    wait_for(lambda: _health(url) == "ok", 30, what="the survivor's /health ok")
    servers = _servers_on_store(home)
    assert servers and all(ppid == survivor.pid for _, ppid in servers), servers
    assert len(servers) == 1, servers
    r = httpx.post(f"{url}/api/workspaces/core/signals/echo", json={"payload": {"n": round_}}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert _health(url) == "ok"
    assert _servers_on_store(home) == servers, "the broker changed under the survivor"
    survivor_log = logs[1 - loser_i].read_text(errors="replace")
    assert "Authorization Violation" not in survivor_log, survivor_log[-3000:]
    assert "leftover" not in survivor_log + said, survivor_log[-3000:]
    assert _stop(survivor) == 0, logs[1 - loser_i].read_text(errors="replace")[-3000:]


def test_two_starts_at_once_leave_one_working_daemon(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    home = tmp_path / "home"  # the same home every round: later rounds also meet what the previous one left
    for round_ in range(ROUNDS):
        _race_once(tmp_path, home, round_, procs)


def test_start_while_the_holder_is_starting_touches_nothing(tmp_path: Path,
                                                           procs: list[subprocess.Popen[bytes]]) -> None:
    """A process holds the home but serves nothing yet (a daemon still starting): the start fails clearly."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        before = sorted(p.name for p in home.iterdir())
        log = tmp_path / "second.log"
        proc = _spawn(home, log)
        procs.append(proc)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the second start did not give way: {log.read_text(errors='replace')[-3000:]}")
        said = log.read_text(errors="replace")
        assert code == 1, said
        assert f"(pid {os.getpid()})" in said and "is still starting" in said and str(home) in said, said
        assert "Traceback" not in said, said
        assert sorted(p.name for p in home.iterdir()) == before  # no nats/, daemon-id, atlas.db, daemon.json
    finally:
        os.close(fd)


def test_start_on_a_healthy_daemon_prints_its_status_and_changes_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"]).start()
    try:
        nats_dir = d.home / "nats"
        before = {name: (nats_dir / name).read_bytes() for name in ("nats.conf", "token", "nats.pid")}
        daemon_id = (d.home / "daemon-id").read_text()
        r = subprocess.run([ATLAS, "daemon", "start", "--home", str(d.home), "--port", "0"], env=_env(), cwd=ROOT,
                           capture_output=True, timeout=60)
        out = (r.stdout + r.stderr).decode(errors="replace")
        assert r.returncode == 0, out
        assert "already running" in out and str(d.proc.pid if d.proc else "") in out, out
        assert {name: (nats_dir / name).read_bytes() for name in before} == before
        assert (d.home / "daemon-id").read_text() == daemon_id
        assert _health(d.url) == "ok"
        r2 = httpx.post(f"{d.url}/api/workspaces/core/signals/echo", json={"payload": {"n": 1}}, timeout=30)
        assert r2.status_code == 200, r2.text
    finally:
        assert d.stop() == 0, d.log()


def test_nats_server_does_not_hold_the_lock_and_kill_9_releases_it(tmp_path: Path) -> None:
    """The lock dies with the daemon process, whatever kills it: the broker child must not keep it alive."""
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "core"]).start()
    try:
        lock = d.home / "daemon.lock"
        assert lock.exists()
        nats_pid = d.nats_pid()
        assert nats_pid is not None
        held = []
        for fd in Path(f"/proc/{nats_pid}/fd").iterdir():
            try:
                held.append(os.readlink(fd))
            except OSError:
                continue
        assert str(lock) not in held, held
        d.kill9()
        d.start()  # a new daemon on the same home comes up: no stale lock
        r = httpx.post(f"{d.url}/api/workspaces/core/signals/echo", json={"payload": {"n": 1}}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        assert d.stop() == 0, d.log()
