"""A failed step's `errorDetails` (issue #16): the traceback of a python step, the stderr tail of a shell step.

Why: a step's `error` is one line (`ValueError: asked to fail`, `command exited with status 3`), which says what
broke but not where or why. The user needs the file and line of their own code, or what the command printed before
it died. Both are bounded here, because they are recorded on `step:complete` and replayed to every viewer; the
runtime redacts secrets from them before recording (it knows the `secret()` values, this module does not).

The traceback keeps the user's frames and drops the daemon's own: the frames before the first one that is not the
daemon's (atlas, asyncio, the thread pool, importlib) are how the daemon called the step, which no user can act on.
Frames after it stay, whoever they belong to: a library the step called is part of the user's story.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import threading
import traceback
from pathlib import Path
from typing import Any

import atlas

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_TRACEBACK_CHARS",
    "STDERR_TAIL_BYTES",
    "STDERR_TAIL_LINES",
    "TAIL_CUT_MARKER",
    "cut_middle",
    "exception_type",
    "python_details",
    "shell_details",
    "tail_lines",
]

#: A traceback is kept up to this many characters (its head and its tail, the innermost frames, around a marker).
MAX_TRACEBACK_CHARS = 8 * 1024
#: An exception's message in `errorDetails.message`.
MAX_MESSAGE_CHARS = 4 * 1024
#: A shell step's `stderrTail`: its last lines, at most this many and this many bytes.
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4 * 1024
#: The first line of a `stderrTail` that is not the whole of stderr.
TAIL_CUT_MARKER = "… [earlier output cut]"

_DAEMON_DIRS = tuple(
    str(Path(path).resolve().parent)
    for path in (atlas.__file__, asyncio.__file__, concurrent.futures.__file__, importlib.__file__)
    if path is not None
)
_DAEMON_FILES = (str(Path(threading.__file__).resolve()),)


def cut_middle(text: str, limit: int) -> str:
    """`text`, or its head and tail around a `… [cut: N characters] …` line when it is longer than `limit`.

    Why both ends: a traceback's head says how the step was entered and its tail where it failed; the middle of a
    deep recursion is what can go."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n… [cut: {len(text) - limit} characters] …\n{text[-tail:]}"


def exception_type(exc: BaseException) -> str:
    """The class as Python's traceback names it: `ValueError` for a builtin, `steps.LoadError` for the user's."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _is_daemon_frame(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    try:
        path = str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return False
    return path in _DAEMON_FILES or any(path.startswith(directory + "/") for directory in _DAEMON_DIRS)


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    """Drop the leading daemon frames of `te` and of the exceptions chained to it (`raise … from`, groups)."""
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = list(te.stack)
    first_user = next((i for i, frame in enumerate(frames) if not _is_daemon_frame(frame.filename)), None)
    if first_user is None and issubclass(te.exc_type or type(None), SyntaxError):
        first_user = len(frames)  # a module that does not compile: the error itself names the file and line
    if first_user:  # None: no user frame at all (keep them, they are the only clue); 0: nothing to drop
        te.stack = traceback.StackSummary.from_list(frames[first_user:])
    for chained in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if chained is not None:
            _trim(chained, seen)


def python_details(exc: BaseException) -> dict[str, Any]:
    """`{type, message, traceback}` of an exception raised by a python step (or while loading its module).

    Blocking (it reads the source lines of the frames): call it off the event loop."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    _trim(te, set())
    text = "".join(te.format()).rstrip("\n")
    return {
        "type": exception_type(exc),
        "message": cut_middle(str(exc), MAX_MESSAGE_CHARS),
        "traceback": cut_middle(text, MAX_TRACEBACK_CHARS),
    }


def tail_lines(text: str, max_lines: int = STDERR_TAIL_LINES, max_chars: int = STDERR_TAIL_BYTES,
               cut_before: bool = False) -> str:
    """The last `max_lines` lines of `text` within `max_chars`, after a `… [earlier output cut]` line when
    anything before them went.

    `cut_before`: `text` is itself only the end of a longer output, so its first line is a partial one."""
    lines = [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]
    partial = cut_before and len(lines) > 1
    if partial:
        lines = lines[1:]
    kept = lines[-max_lines:]
    tail = "\n".join(kept)
    cut = partial or len(kept) < len(lines)
    if len(tail) > max_chars:
        tail, cut = tail[-max_chars:], True
    return f"{TAIL_CUT_MARKER}\n{tail}" if cut else tail


def shell_details(
    message: str, stderr_tail: str, *, exit_code: int | None, cut_before: bool = False
) -> dict[str, Any]:
    """`{type: "ShellError", message, stderrTail, exitCode?}` of a failed shell step (`stderrTail` only when the
    command wrote to stderr)."""
    details: dict[str, Any] = {"type": "ShellError", "message": message}
    tail = tail_lines(stderr_tail, cut_before=cut_before)
    if tail.strip():
        details["stderrTail"] = tail
    if exit_code is not None:
        details["exitCode"] = exit_code
    return details
