"""Stop MCP stdio servers a killed daemon left behind (issue #14: "at the latest by the next start").

Each server's launcher (`atlas.mcp.launch`) records `<pid> <start time>` in the daemon's run directory. The
server leads its own session, so every process it started carries that pid as session id, even after the
server itself was killed by the parent-death signal. At start the daemon kills, for each leftover file, every
process of that session — unless the pid now belongs to another process (start time differs), in which case
the file is only removed.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from atlas.mcp.launch import process_start_time

__all__ = ["reap_leftovers", "session_members"]

log = logging.getLogger(__name__)


def session_members(sid: int) -> list[int]:
    """Pids of the live processes whose session id is `sid` (field 6 of /proc/<pid>/stat, after the name)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def reap_leftovers(run_dir: Path) -> int:
    """Kill the sessions recorded in `run_dir/*.pid` by an earlier daemon; returns how many processes died."""
    killed = 0
    if not run_dir.is_dir():
        return 0
    for pidfile in run_dir.glob("*.pid"):
        try:
            pid_text, _, started = pidfile.read_text(encoding="ascii").strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
            continue
        now = process_start_time(pid)
        if now is not None and started and now != started:
            pidfile.unlink(missing_ok=True)  # the pid was reused by an unrelated process
            continue
        for member in session_members(pid):
            try:
                os.kill(member, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        pidfile.unlink(missing_ok=True)
    if killed:
        log.warning("stopped %d MCP server process(es) left by an earlier daemon", killed)
    return killed
