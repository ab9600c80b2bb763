"""`type: shell` agents: run an argv list in its own process group (spec §2.5, §10.8).

Payload data is attacker-controlled, so it must never meet a shell: the command is an argv list, each element
is templated on its own and becomes exactly one argv element, and the input travels on stdin as JSON. The
child gets a minimal environment (never `ATLAS_TOKEN`) and its own session (`start_new_session`), so that a
timeout or a cancel can stop the whole process group, grandchildren included.

Known limits: a background grandchild that keeps stdout/stderr open keeps the step running until its timeout
(the pipes never reach EOF). A descendant that leaves the process group (`setsid`, a daemonising tool) is out of
reach of the group kill and outlives a timeout or cancel; containing it needs a cgroup (see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

from atlas.agents.base import MAX_LOG_LINE_CHARS, AgentContext, StepError
from atlas.agents.errordetails import STDERR_TAIL_BYTES, shell_details
from atlas.config.durations import parse_duration
from atlas.config.model import ShellAgentConfig
from atlas.templating import Templater

__all__ = ["KILL_GRACE_SECONDS", "MAX_STREAM_BYTES", "run_shell"]

MAX_STREAM_BYTES = 1024 * 1024
#: Time between SIGTERM and SIGKILL when a step times out or is cancelled.
KILL_GRACE_SECONDS = 5.0
_REAP_SECONDS = 1.0
_READ_SIZE = 64 * 1024
_MAX_PENDING_LINE_BYTES = MAX_LOG_LINE_CHARS * 4  # enough bytes for MAX_LOG_LINE_CHARS characters of UTF-8
_PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "TZ")
_SESSION_ENV = {
    "ATLAS_SESSION_ID": "id",
    "ATLAS_CORRELATION_ID": "correlationId",
    "ATLAS_WORKSPACE_ID": "workspaceId",
}
_NEVER_PASSED_ENV = ("ATLAS_TOKEN",)


def _as_text(value: Any) -> str:
    """A rendered argv element or env value as one string: str unchanged, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _refuse_nul(argv: list[str], env: Mapping[str, str]) -> None:
    """Fail the step when a rendered argv element or env entry holds a NUL (bug #19.10).

    exec() takes C strings, so a NUL silently ends the value: uvloop passed `/data/../../etc/passwd\\0.csv` on as
    `/data/../../etc/passwd`, letting payload data cut a path short. The standard loop refuses with a bare
    ValueError; this check gives both loops the same clear error. The value itself is not quoted, as it may be
    payload data or a secret (env values are redacted everywhere, spec §10.7).
    """
    for index, element in enumerate(argv):
        if "\0" in element:
            raise StepError("agent_error", f"command[{index}] contains a NUL character once rendered; a program "
                            "cannot receive it")
    for name, value in env.items():
        if "\0" in name or "\0" in value:
            shown = name.replace("\0", "\\0")
            raise StepError("agent_error", f"env {shown!r} contains a NUL character once rendered; a program "
                            "cannot receive it")


def _environment(config: ShellAgentConfig, ctx: AgentContext, rendered: Mapping[str, Any]) -> dict[str, str]:
    """The child's environment: the minimal passthrough (or the daemon's, with `inherit_env`), the step's rendered
    `env`, the session's ids, and never the daemon's token."""
    if config.inherit_env:
        env = dict(os.environ)
    else:
        env = {name: os.environ[name] for name in _PASSTHROUGH_ENV if name in os.environ}
    env.update({name: _as_text(value) for name, value in rendered.items()})
    for name, key in _SESSION_ENV.items():
        if ctx.session.get(key) is not None:
            env[name] = str(ctx.session[key])
    for name in _NEVER_PASSED_ENV:
        env.pop(name, None)
    return env


class _Capture:
    """One output stream: keeps the first MAX_STREAM_BYTES and forwards each line as a `log` chunk.

    It reads in fixed-size blocks rather than `readline()` so that a gigantic line cannot exhaust memory, and
    it keeps reading (and discarding) past the cap so that the child never blocks on a full pipe.
    """

    def __init__(self, name: str, ctx: AgentContext) -> None:
        self.name = name
        self.ctx = ctx
        self.data = bytearray()
        self.truncated = False
        self._pending = bytearray()
        self._skipping_long_line = False
        #: The stream's last bytes, whatever the cap kept: a failed step's `stderrTail` is the end of stderr.
        self._tail = bytearray()
        self._seen = 0

    async def pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_READ_SIZE):
            room = MAX_STREAM_BYTES - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self.data += chunk[:room]
            self._keep_tail(chunk)
            self._split_lines(chunk)
        if self._pending and not self._skipping_long_line:
            self._emit(bytes(self._pending))
        self._pending.clear()

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def _keep_tail(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        self._tail += chunk[-STDERR_TAIL_BYTES:]
        if len(self._tail) > STDERR_TAIL_BYTES:
            del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]

    def tail(self) -> tuple[str, bool]:
        """The stream's last bytes as text, and whether they are only its end (its first line then is partial)."""
        return self._tail.decode("utf-8", errors="replace"), self._seen > len(self._tail)

    def _split_lines(self, chunk: bytes) -> None:
        """Emit every line `chunk` completes; a line is never held (or sent) beyond _MAX_PENDING_LINE_BYTES.

        The lines wholly inside `chunk` go out as one block (issue #19, bug 1): a 64 KiB read can hold 64 Ki
        empty lines, and a search, a decode and a call per line made reading a verbose step the daemon's main work.
        """
        first_end = chunk.find(b"\n")
        if first_end >= 0:
            first, self._pending = self._pending + chunk[:first_end], bytearray()
            if self._skipping_long_line:
                self._skipping_long_line = False  # the tail of a line already sent cut
            else:
                self._emit(bytes(first[:_MAX_PENDING_LINE_BYTES]))
            last_end = chunk.rfind(b"\n")
            if last_end > first_end:
                self._emit_block(chunk[first_end + 1 : last_end])
            chunk = chunk[last_end + 1 :]
        if self._skipping_long_line:
            return
        self._pending += chunk[: _MAX_PENDING_LINE_BYTES + 1 - len(self._pending)]
        if len(self._pending) > _MAX_PENDING_LINE_BYTES:
            self._emit(bytes(self._pending))  # emit_log cuts it to MAX_LOG_LINE_CHARS
            self._pending.clear()
            self._skipping_long_line = True

    def _emit_block(self, block: bytes) -> None:
        """Emit the complete lines of `block` (newline-separated, without the last newline)."""
        if b"\r" in block:  # line ends are trimmed of `\r` one line at a time
            for line in block.split(b"\n"):
                self._emit(line[:_MAX_PENDING_LINE_BYTES])
            return
        # A newline never occurs inside a multi-byte UTF-8 sequence, so decoding the block equals decoding each line.
        self.ctx.emit_log_lines(self.name, block.decode("utf-8", errors="replace"))

    def _emit(self, line: bytes) -> None:
        self.ctx.emit_log(self.name, line.rstrip(b"\r").decode("utf-8", errors="replace"))


async def _feed_stdin(stdin: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write the input and close stdin; a command that exits without reading it is no error (bug #19.4).

    Not reading the input is the command's business, so every way the pipe can be gone is swallowed here: the
    standard loop reports it as `BrokenPipeError`/`ConnectionResetError`, but uvloop closes the transport once
    the child has exited and then raises `RuntimeError` ("the handler is closed") from `write()`, which used to
    fail a step whose command had succeeded. Only this writer's own transport is touched in the `try`.
    """
    if stdin is None or data is None:
        return
    try:
        if not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass  # the pipe is gone: the command did not read (all of) its input
    finally:
        stdin.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session made the child a group leader: pgid == pid


async def _terminate(process: asyncio.subprocess.Process, io: asyncio.Future[Any]) -> None:
    """SIGTERM the process group, SIGKILL it after KILL_GRACE_SECONDS, and keep draining its pipes meanwhile.

    The pipes are drained by `io` (still running) because a child blocked on a full pipe cannot die cleanly,
    and on Python 3.11 `Process.wait()` only returns once the pipes are closed.
    """
    try:
        _signal_group(process.pid, signal.SIGTERM)
        _, pending = await asyncio.wait({io}, timeout=KILL_GRACE_SECONDS)
        if pending:
            _signal_group(process.pid, signal.SIGKILL)
            await asyncio.wait({io}, timeout=_REAP_SECONDS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_SECONDS):
                await process.wait()
    finally:
        _signal_group(
            process.pid, signal.SIGKILL
        )  # stragglers that survived SIGTERM, even if the leader exited
        if not io.done():
            io.cancel()
        elif not io.cancelled():
            io.exception()  # mark retrieved: the step already failed for a better reason


def _details(message: str, stderr: _Capture, exit_code: int | None) -> dict[str, Any]:
    """The failed step's `errorDetails`: so `command exited with status 3` comes with what the command said."""
    text, partial = stderr.tail()
    return shell_details(message, text, exit_code=exit_code, cut_before=partial)


def _output(exit_code: int | None, stdout: _Capture, stderr: _Capture) -> dict[str, Any]:
    output: dict[str, Any] = {"exitCode": exit_code, "stdout": stdout.text(), "stderr": stderr.text()}
    if stdout.truncated or stderr.truncated:
        output["truncated"] = True
    return output


async def run_shell(
    config: ShellAgentConfig, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> dict[str, Any]:
    """Run the command; return `{exitCode, stdout, stderr, truncated?}` or raise `exit_status` / `timeout`."""
    # Rendered on the template pool, off the event loop: payload data can make a render expensive (bug #19.11).
    argv = [_as_text(element) for element in await templater.render_async(list(config.command), variables)]
    env = _environment(config, ctx, await templater.render_async(dict(config.env), variables))
    _refuse_nul(argv, env)
    cwd = ctx.workspace_dir / config.cwd if config.cwd else ctx.workspace_dir
    timeout = parse_duration(config.timeout) if config.timeout else None
    stdin_data = json.dumps(ctx.input).encode() if config.stdin == "input" else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # not found, not executable, bad cwd, NUL byte in an argument…
        raise StepError("agent_error", f"cannot start {argv[0]!r}: {exc}") from exc

    stdout, stderr = _Capture("stdout", ctx), _Capture("stderr", ctx)
    io = asyncio.gather(
        stdout.pump(process.stdout), stderr.pump(process.stderr), _feed_stdin(process.stdin, stdin_data)
    )
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(io)  # shielded: on timeout/cancel, _terminate keeps draining the pipes
            exit_code = await process.wait()
    except TimeoutError:
        await _terminate(process, io)
        message = f"command timed out after {config.timeout}"
        err = StepError("timeout", message, output=_output(process.returncode, stdout, stderr))
        err.details = _details(message, stderr, process.returncode)
        raise err from None
    except BaseException:  # cancellation (or a bug): never leave the process group running
        await _terminate(process, io)
        raise

    output = _output(exit_code, stdout, stderr)
    if exit_code != 0:
        message = f"command exited with status {exit_code}"
        err = StepError("exit_status", message, output=output)
        err.details = _details(message, stderr, exit_code)
        raise err
    return output
