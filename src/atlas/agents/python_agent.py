"""`type: python` agents: a trusted function from the workspace, run inside the daemon (spec §2.5, §10.9).

The function gets `ctx` and returns the step output. Async functions run on the event loop; sync ones in a
worker thread so that they cannot stall the daemon. The return value is round-tripped through JSON, both to
reject values that could not be recorded (`invalid_output`) and to detach the output from objects the
workspace code may keep mutating.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atlas.agents.base import AgentContext, StepError
from atlas.agents.errordetails import python_details
from atlas.config.model import PythonAgentConfig

__all__ = ["run_python"]

_import_lock = threading.Lock()  # sys.path is process-global; imports from two workspaces must not interleave
_functions: dict[tuple[Path, str], Callable[..., Any]] = {}


def _is_under(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory)
    except OSError:
        return False


def _import(entrypoint: str, workspace_dir: Path) -> Callable[..., Any]:
    """Import `module:function` with the workspace dir first on sys.path (blocking: run it in a thread)."""
    module_name, _, function_name = entrypoint.partition(":")
    workspace = workspace_dir.resolve()
    with _import_lock:
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
    return function


async def _load(entrypoint: str, workspace_dir: Path) -> Callable[..., Any]:
    key = (workspace_dir, entrypoint)
    function = _functions.get(key)
    if function is None:
        try:
            function = await asyncio.to_thread(_import, entrypoint, workspace_dir)
        except Exception as exc:  # ImportError, SyntaxError, AttributeError, errors raised at import time…
            raise await _failure(f"cannot load {entrypoint}: {type(exc).__name__}: {exc}", exc) from exc
        _functions[key] = function
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


async def run_python(config: PythonAgentConfig, ctx: AgentContext) -> Any:
    """Call the entrypoint with `ctx` and return its JSON-clean result.

    On asyncio cancellation `ctx.cancelled` is set before re-raising, so a sync function polling it can stop;
    one that ignores it keeps its worker thread until it returns, and its result is discarded.
    """
    function = await _load(config.entrypoint, ctx.workspace_dir)
    ctx.params = dict(config.params)
    try:
        if inspect.iscoroutinefunction(function):
            result = await function(ctx)
        else:
            result = await asyncio.to_thread(function, ctx)
            if inspect.isawaitable(result):  # e.g. a callable object with an async __call__
                result = await result
    except asyncio.CancelledError:
        ctx.cancelled.set()
        raise
    except StepError as exc:  # workspace code may fail with a specific errorCode on purpose
        if exc.details is None:
            exc.details = await asyncio.to_thread(python_details, exc)
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() in workspace code must not stop the daemon
        raise await _failure(f"{type(exc).__name__}: {exc}", exc) from exc
    return _json_output(result)
