"""`atlas schedules list|pause|resume` (issue 6): the cron schedules of every loaded workspace."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, connect, handle_errors
from atlas.cli.render import Output, local_time, rel_time, status_text

schedules_app = typer.Typer(help="Cron schedules: list them, pause and resume them.", no_args_is_help=True)

WorkspaceArg = Annotated[str, typer.Argument(help="Workspace id.")]
SignalArg = Annotated[str, typer.Argument(help="Schedule signal id.")]


def _row(entry: dict[str, Any], out: Output) -> list[Any]:
    last = entry.get("lastResult") or {}
    next_run = entry.get("nextRun")
    return [
        f"{entry['workspaceId']}/{entry['signalId']}",
        entry.get("schedule", ""),
        entry.get("timezone", ""),
        "paused" if entry.get("paused") else f"{local_time(next_run, with_date=True)} ({rel_time(next_run)})"
        if next_run else "-",
        status_text(last["status"], rich=out.rich) if last.get("status") else "-",
        entry.get("onMissed", ""),
    ]


@schedules_app.command("list")
@handle_errors
def schedules_list(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List every schedule with its next fire time and last result (GET /api/schedules)."""
    out = Output(json_out)
    with connect(url, token) as api:
        body = api.get("/api/schedules")
    if out.json:
        out.emit_json(body)
        return
    rows = [_row(e, out) for e in body.get("schedules", [])]
    out.table(["schedule", "cron", "timezone", "next run", "last result", "on missed"], rows,
              empty="No schedules: add a signal with provider: schedule to a workspace.")


def _toggle(action: str, workspace: str, signal: str, url: str | None, token: str | None, json_out: bool) -> None:
    out = Output(json_out)
    with connect(url, token) as api:
        entry = api.post(f"/api/schedules/{workspace}/{signal}/{action}")
    if out.json:
        out.emit_json(entry)
        return
    out.table(["schedule", "cron", "timezone", "next run", "last result", "on missed"], [_row(entry, out)])


@schedules_app.command("pause")
@handle_errors
def schedules_pause(workspace: WorkspaceArg, signal: SignalArg, url: UrlOpt = None, token: TokenOpt = None,
                    json_out: JsonOpt = False) -> None:
    """Pause a schedule: its ticks fire nothing until it is resumed (missed ticks are not made up)."""
    _toggle("pause", workspace, signal, url, token, json_out)


@schedules_app.command("resume")
@handle_errors
def schedules_resume(workspace: WorkspaceArg, signal: SignalArg, url: UrlOpt = None, token: TokenOpt = None,
                     json_out: JsonOpt = False) -> None:
    """Resume a paused schedule from its next tick."""
    _toggle("resume", workspace, signal, url, token, json_out)
