"""Options every command shares (`--url`, `--token`, `--json`), and the wrapper that turns errors into exit codes."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import httpx
import typer

from atlas.cli.client import EXIT_ERROR, Api, CliError, resolve_target
from atlas.cli.render import Output

CONNECTION = "Connection"

UrlOpt = Annotated[str | None, typer.Option(
    "--url", metavar="URL", show_default=False, rich_help_panel=CONNECTION,
    help="Daemon URL. Default: ATLAS_URL, else the url in $ATLAS_HOME/daemon.json, else http://127.0.0.1:8080.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", metavar="TOKEN", show_default=False, rich_help_panel=CONNECTION,
    help="API token sent as a bearer token. Default: ATLAS_TOKEN.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Machine-readable output: one JSON document on stdout (JSON lines when following a run).")]


def complete_workspace(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for workspace ids: asks the daemon, quietly gives up if it is not reachable."""
    try:
        with Api(resolve_target(ctx.params.get("url"), ctx.params.get("token")), timeout=1.0) as api:
            return [w["id"] for w in api.get("/api/workspaces") if str(w["id"]).startswith(incomplete)]
    except (CliError, httpx.HTTPError, KeyError, TypeError, ValueError):
        return []


def complete_signal(ctx: typer.Context, incomplete: str) -> list[str]:
    ws = ctx.params.get("workspace")
    if not ws:
        return []
    try:
        with Api(resolve_target(ctx.params.get("url"), ctx.params.get("token")), timeout=1.0) as api:
            signals = api.get(f"/api/workspaces/{ws}/signals")["signals"]
            return [s["name"] for s in signals if str(s["name"]).startswith(incomplete)]
    except (CliError, httpx.HTTPError, KeyError, TypeError, ValueError):
        return []


def complete_session(ctx: typer.Context, incomplete: str) -> list[str]:
    try:
        with Api(resolve_target(ctx.params.get("url"), ctx.params.get("token")), timeout=1.0) as api:
            recent = api.get("/api/sessions", limit=100)["sessions"]
            return [s["sessionId"] for s in recent if str(s["sessionId"]).startswith(incomplete)]
    except (CliError, httpx.HTTPError, KeyError, TypeError, ValueError):
        return []


WorkspaceOpt = Annotated[str, typer.Option(
    "--workspace", "-w", metavar="WS", help="Workspace id.", autocompletion=complete_workspace)]

F = TypeVar("F", bound=Callable[..., Any])


def tidy_help(doc: str | None) -> str | None:
    """A docstring as help text: paragraphs kept, line breaks inside a paragraph joined (Typer keeps them)."""
    if not doc:
        return doc
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def handle_errors(func: F) -> F:
    """Run a command: CliError → its message on stderr (and JSON on stdout with --json) and its exit code;
    an unexpected exception → one line and exit 1 (ATLAS_DEBUG=1 shows the traceback). Also tidies the
    docstring that Typer shows as the command's help."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CliError as err:
            Output(bool(kwargs.get("json_out"))).error(err)
            raise typer.Exit(err.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `atlas … | head`: the reader left; stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as exc:  # the last resort: one readable line, never a wall of traceback
            if os.environ.get("ATLAS_DEBUG"):
                raise
            unexpected = CliError(EXIT_ERROR, "internal_error", f"unexpected error: {type(exc).__name__}: {exc}")
            Output(bool(kwargs.get("json_out"))).error(unexpected)
            print("(set ATLAS_DEBUG=1 to see the traceback)", file=sys.stderr)
            raise typer.Exit(EXIT_ERROR) from None

    wrapper.__doc__ = tidy_help(func.__doc__)
    return wrapper  # type: ignore[return-value]


def connect(url: str | None, token: str | None, home: Any = None) -> Api:
    return Api(resolve_target(url, token, home))
