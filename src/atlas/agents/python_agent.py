"""`type: python` agents: a trusted function from the workspace, run in the daemon's process (spec §2.5, §10.9).

The function gets `ctx` and returns the step output. The return value is round-tripped through JSON, both to
reject values that could not be recorded (`invalid_output`) and to detach the output from objects the workspace
code may keep mutating.

Out of the event loop (issue #16, item 3): every step runs on its own worker thread, never on the daemon's loop. A
sync function is called there; an `async def` one runs on a fresh event loop of that thread (an `asyncio.Runner`),
so a step that calls `time.sleep` or does CPU work between its awaits blocks its own thread and loop, not the
daemon's. A dedicated thread per step (not the loop's default executor) because a step that ignores a cancel keeps
its thread until it returns: it must not take a slot the daemon's own blocking work (workspace loads, tracebacks)
waits for, and being a daemon thread it cannot hold up the daemon's exit either.

Cancellation (a cancelled run, the job timeout) sets `ctx.cancelled` and cancels the step's task on its own loop, so
an `async def` step gets `CancelledError` at its next await as it did on the daemon's loop; the run ends at once
either way, and what a step still running afterwards emits or returns is dropped.

Output: `print()` (sys.stdout/sys.stderr) and `logging` inside a step go to that step's live output (`emit_log`,
streams `stdout`/`stderr`), not to the daemon's terminal. The streams are process-wide, so they are replaced once by
proxies that look up the step in a context variable, set on the step's thread (and inherited by its loop's tasks
and `asyncio.to_thread` calls); outside a step they write through. Records of the daemon's own `atlas.*` loggers are
never captured. Threads or processes a step starts itself are not steps: their output goes where it always did.

Code reload: a workspace's modules are imported once and cached, and `forget_workspace_code` (called when the
workspace is loaded again, `atlas workspace add`) drops them from the cache and from `sys.modules`, so that the next
run imports the code as it is now.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import inspect
import json
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from atlas.agents.base import MAX_LOG_LINE_CHARS, AgentContext, StepError
from atlas.agents.errordetails import python_details
from atlas.config.model import PythonAgentConfig

__all__ = ["forget_workspace_code", "run_python"]

_import_lock = threading.Lock()  # sys.path is process-global; imports from two workspaces must not interleave
_functions: dict[tuple[Path, str], Callable[..., Any]] = {}  # by (workspace dir, entrypoint)


def _is_under(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory)
    except OSError:
        return False


def _import(entrypoint: str, workspace_dir: Path) -> Callable[..., Any]:
    """Import `module:function` with the workspace dir first on sys.path, and cache the function.

    Blocking: run it in a thread. The cache is written under the import lock, so a `forget_workspace_code` that
    runs meanwhile cannot be undone by an import that started before it."""
    module_name, _, function_name = entrypoint.partition(":")
    workspace = workspace_dir.resolve()
    with _import_lock:
        cached = _functions.get((workspace_dir, entrypoint))
        if cached is not None:
            return cached
        entry = str(workspace)
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
        # sys.modules is shared by every workspace: if another workspace already imported a module of the same
        # name, import_module hands that one back. Silently running the wrong workspace's code would be worse.
        top = module_name.split(".")[0]
        local = (workspace / f"{top}.py").exists() or (workspace / top).is_dir()
        origin = getattr(module, "__file__", None)
        if local and origin is not None and not _is_under(Path(origin), workspace):
            raise ImportError(f"module {module_name!r} is already loaded from {origin} (another workspace?)")
        function = getattr(module, function_name)
        if not callable(function):
            raise TypeError(f"{entrypoint} is not callable")
        _functions[(workspace_dir, entrypoint)] = function
        return function


def _loaded_from(module: Any, prefix: str) -> bool:
    """Whether `module` was imported from under the directory `prefix` (ending in a slash): its file, or for a
    namespace package one of its search paths. By string, so that no module costs a filesystem call."""
    origin = getattr(module, "__file__", None)
    if isinstance(origin, str):
        return origin.startswith(prefix)
    paths = getattr(module, "__path__", None)
    try:
        return paths is not None and any(isinstance(p, str) and p.startswith(prefix) for p in paths)
    except TypeError:  # an exotic __path__ that cannot be iterated
        return False


def forget_workspace_code(workspace_dir: Path) -> int:
    """Drop the functions and modules loaded from `workspace_dir`, so that its next step imports them afresh.

    Why: `atlas workspace add` reloads a workspace to pick up changes, and its python code is part of it; a module
    left in `sys.modules` would keep serving the old functions (a new one was "not found") until a restart. Steps
    already running keep the function they started with. Blocking (the import lock): call it off the event loop.
    Returns how many modules were dropped."""
    workspace = workspace_dir.resolve()
    prefix = f"{workspace}/"
    with _import_lock:
        for key in [key for key in _functions if key[0].resolve() == workspace]:
            del _functions[key]
        names = [name for name, module in list(sys.modules.items()) if _loaded_from(module, prefix)]
        for name in names:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
    return len(names)


async def _load(entrypoint: str, workspace_dir: Path) -> Callable[..., Any]:
    function = _functions.get((workspace_dir, entrypoint))
    if function is None:
        try:
            function = await asyncio.to_thread(_import, entrypoint, workspace_dir)
        except Exception as exc:  # ImportError, SyntaxError, AttributeError, errors raised at import time…
            raise await _failure(f"cannot load {entrypoint}: {type(exc).__name__}: {exc}", exc) from exc
    return function


async def _failure(message: str, exc: BaseException) -> StepError:
    """An `agent_error` carrying the exception's `errorDetails` (its traceback names the user's file and line).

    The traceback is formatted on a thread because formatting reads the frames' source lines from disk."""
    err = StepError("agent_error", message)
    err.details = await asyncio.to_thread(python_details, exc)
    return err


def _json_output(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise StepError("invalid_output", f"return value is not JSON-serialisable: {exc}") from exc


# ---------------------------------------------------------------- print and logging of a step


class _Capture:
    """One step's captured output: text written to its stdout/stderr, cut into lines sent with `emit_log_lines`.

    A partial line waits for its newline (print writes the text and the newline separately) unless it grows past
    MAX_LOG_LINE_CHARS; what is left is sent when the step ends. Locked, as a step may write from several threads.
    """

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._pending = {"stdout": "", "stderr": ""}

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            data = self._pending[stream] + text
            complete, newline, rest = data.rpartition("\n")
            if newline:
                self._ctx.emit_log_lines(stream, complete)
            if len(rest) >= MAX_LOG_LINE_CHARS:
                self._ctx.emit_log(stream, rest)
                rest = ""
            self._pending[stream] = rest

    def close(self) -> None:
        with self._lock:
            for stream, rest in self._pending.items():
                if rest:
                    self._ctx.emit_log(stream, rest)
            self._pending = {"stdout": "", "stderr": ""}


_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("atlas_python_step", default=None)


class _StepStream:
    """Stands for sys.stdout or sys.stderr: inside a step, text goes to the step's output; elsewhere, through."""

    def __init__(self, name: str, original: TextIO | None) -> None:
        self._name = name
        self._original = original

    def write(self, text: str) -> int:
        capture = _capture.get()
        if capture is None:
            return self._original.write(text) if self._original is not None else len(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        capture.write(self._name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _capture.get() is None and self._original is not None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer… of the real stream
        return getattr(self._original, name)


def _is_daemon_record(record: logging.LogRecord) -> bool:
    return record.name == "atlas" or record.name.startswith("atlas.")


class _StepLogHandler(logging.Handler):
    """Sends the records logged inside a step (other than the daemon's own) to its `stderr` output."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _capture.get()
        if capture is None or _is_daemon_record(record):
            return
        try:
            capture.write("stderr", self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _not_in_a_step(record: logging.LogRecord) -> bool:
    """Filter for the daemon's own handlers: a step's records go to the step, not to the daemon's log."""
    return _capture.get() is None or _is_daemon_record(record)


_log_handler = _StepLogHandler()
_log_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def _install_capture() -> None:
    """Put the stream proxies and the logging handler in place (idempotent, cheap: checked at every step).

    At every step because others may replace them (a test harness swaps sys.stdout, a library adds a root
    handler after the daemon started), and a handler added later must learn to leave steps' records alone."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, _StepStream):
            setattr(sys, name, _StepStream(name, current))
    root = logging.getLogger()
    if _log_handler not in root.handlers:
        root.addHandler(_log_handler)
    for handler in root.handlers:
        if handler is not _log_handler and _not_in_a_step not in handler.filters:
            handler.addFilter(_not_in_a_step)


# ---------------------------------------------------------------- the step's thread


class _Cancel:
    """How the daemon's loop cancels an `async def` step on the step's own loop (from another thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._requested = False

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        """Called on the step's loop as its task starts: a cancel that came first applies now."""
        with self._lock:
            self._loop, self._task = loop, task
            if self._requested:
                task.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._requested = True
            if self._loop is not None and self._task is not None:
                try:
                    self._loop.call_soon_threadsafe(self._task.cancel)
                except RuntimeError:  # the step's loop is already closed: nothing left to cancel
                    pass


def _run_on_own_loop(awaitable: Awaitable[Any], cancel: _Cancel) -> Any:
    """Run `awaitable` to its end on a new event loop of this thread (closed after, leftover tasks cancelled)."""

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None
        cancel.attach(asyncio.get_running_loop(), task)
        return await awaitable

    with asyncio.Runner() as runner:
        return runner.run(main())


def _call(function: Callable[..., Any], ctx: AgentContext, capture: _Capture, cancel: _Cancel) -> Any:
    """The step itself, on its worker thread, with its output captured."""
    _capture.set(capture)  # this thread's context only (a copy made for the step)
    try:
        if inspect.iscoroutinefunction(function):
            coroutine: Coroutine[Any, Any, Any] = function(ctx)
            return _run_on_own_loop(coroutine, cancel)
        result = function(ctx)
        if inspect.isawaitable(result):  # e.g. a callable object with an async __call__
            return _run_on_own_loop(result, cancel)
        return result
    finally:
        capture.close()


def _worker(future: concurrent.futures.Future[Any], context: contextvars.Context,
            call: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = context.run(call)
    except BaseException as exc:  # everything, SystemExit included, is the step's failure, not this thread's
        future.set_exception(exc)
    else:
        future.set_result(result)


async def _in_thread(function: Callable[..., Any], ctx: AgentContext) -> Any:
    """Run the step on its own daemon thread; on cancel, tell the step and return at once (see module doc)."""
    capture, cancel = _Capture(ctx), _Cancel()
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=_worker,
        args=(future, context, lambda: _call(function, ctx, capture, cancel)),
        name=f"atlas-python-step-{getattr(function, '__name__', 'step')}",
        daemon=True,
    )
    thread.start()
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling() == 0 and future.done():  # the step raised it itself
            exc = future.exception()
            assert exc is not None
            raise await _failure("CancelledError: the step raised CancelledError", exc) from None
        ctx.cancelled.set()
        cancel.cancel()
        raise


async def run_python(config: PythonAgentConfig, ctx: AgentContext) -> Any:
    """Call the entrypoint with `ctx` on its own thread and return its JSON-clean result.

    On asyncio cancellation `ctx.cancelled` is set (and an `async def` step is cancelled on its own loop) before
    re-raising, so a step polling it can stop; one that ignores it keeps its thread until it returns, and its
    result is discarded.
    """
    function = await _load(config.entrypoint, ctx.workspace_dir)
    ctx.params = dict(config.params)
    _install_capture()
    try:
        result = await _in_thread(function, ctx)
    except asyncio.CancelledError:
        raise
    except StepError as exc:  # workspace code may fail with a specific errorCode on purpose
        if exc.details is None:
            exc.details = await asyncio.to_thread(python_details, exc)
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # sys.exit() in workspace code must not stop the daemon
        raise await _failure(f"{type(exc).__name__}: {exc}", exc) from exc
    return _json_output(result)
