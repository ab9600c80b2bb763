"""`python -m atlas.mcp.launch PIDFILE -- COMMAND ARG…`: become an MCP stdio server that dies with the daemon.

Why a launcher: the MCP SDK spawns the server itself (in a new session, so it has its own process group) and
offers no hook to run code in the child. This program runs in that child before `exec`:
1. `prctl(PR_SET_PDEATHSIG, SIGKILL)`: if the daemon dies, even by kill -9, the kernel kills the server;
2. writes `<pid> <start time>` to PIDFILE, so that the next daemon start can kill what a parent-death signal
   does not reach (the server's own children, in the same process group);
3. `execvp`s the command with the argument list it was given (never a shell string), keeping its pid.
It imports nothing but the standard library, to start fast.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            data = stat.read()
    except OSError:
        return None
    return data.rpartition(")")[2].split()[19]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m atlas.mcp.launch PIDFILE -- COMMAND [ARG…]", file=sys.stderr)
        return 2
    pidfile, command = argv[0], argv[2:]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the next start still reaps by the pid file
        pass
    if os.getppid() == 1:  # the daemon died before prctl took effect
        return 1
    tmp = f"{pidfile}.tmp"
    with open(tmp, "w", encoding="ascii") as out:
        out.write(f"{os.getpid()} {process_start_time(os.getpid()) or ''}\n")
    os.replace(tmp, pidfile)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"atlas: cannot run MCP server {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
