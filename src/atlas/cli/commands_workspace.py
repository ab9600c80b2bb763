"""`atlas workspace add|list|show|remove|validate` (spec §11; validate is offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from atlas.cli.client import EXIT_INVALID, EXIT_OK
from atlas.cli.commands_signal import schema_fields
from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, complete_workspace, connect, handle_errors
from atlas.cli.render import Output, local_time, rel_time

workspace_app = typer.Typer(help="Workspaces: add, list, show, remove and validate workspace.yml files.",
                            no_args_is_help=True)

WorkspaceArg = Annotated[str, typer.Argument(metavar="ID", help="Workspace id.", autocompletion=complete_workspace,
                                             show_default=False)]


@workspace_app.command("add")
@handle_errors
def workspace_add(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A workspace directory (or its workspace.yml).",
                                                 show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a workspace directory to the daemon (or reload it).

    An invalid workspace.yml is rejected with one file:line:column: path: message line per error (exit 5).
    --json prints the API's answer.
    """
    out = Output(json_out)
    target = path.expanduser().resolve()
    if target.is_file():
        target = target.parent
    with connect(url, token) as api:
        body = api.post("/api/workspaces/add", {"path": str(target)})
    if out.json:
        out.emit_json(body)
        return
    verb = "Added" if body.get("created") else "Reloaded"
    out.print(f"{verb} workspace '{body['id']}' ({body.get('name', '')}) from {body.get('path', target)}")


@workspace_app.command("list")
@handle_errors
def workspace_list(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List the daemon's workspaces.

    Shows id, name, status, signal and job counts, and path. --json prints the GET /api/workspaces array.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        items = api.get("/api/workspaces")
    if out.json:
        out.emit_json(items)
        return
    rows = [[w["id"], w.get("name", ""), _status(out, w.get("status", "?")), str(w.get("signalCount", 0)),
             str(w.get("jobCount", 0)), w.get("path", "")] for w in items]
    out.table(["id", "name", "status", "signals", "jobs", "path"], rows,
              empty="No workspaces: add one with `atlas workspace add PATH`.")


def _status(out: Output, status: str) -> str | Text:
    if not out.rich:
        return status
    return Text(status, style={"ready": "green", "invalid": "red", "missing": "yellow"}.get(status, ""))


@workspace_app.command("show")
@handle_errors
def workspace_show(ident: WorkspaceArg, url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Show a workspace: its signals and its jobs.

    Signals are listed with provider, concurrency and schema fields; jobs with their triggers and planned steps.
    --json prints {"workspace": …, "signals": […], "jobs": […]} as the API returns them.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        ws = api.get(f"/api/workspaces/{ident}")
        signals = api.get(f"/api/workspaces/{ident}/signals").get("signals", [])
        jobs = api.get(f"/api/workspaces/{ident}/jobs")
    if out.json:
        out.emit_json({"workspace": ws, "signals": signals, "jobs": jobs})
        return
    out.print(Text(ws["id"], style="bold") if out.rich else ws["id"], f"  {ws.get('name', '')}  ",
              _status(out, ws.get("status", "?")))
    out.fields([
        ("description", ws.get("description") or "-"),
        ("path", ws.get("configPath") or ws.get("path", "")),
        ("added", f"{local_time(ws.get('createdAt'), True)} ({rel_time(ws.get('createdAt'))})"),
    ])
    for err in ws.get("errors") or []:
        out.print(f"  error: {err}")
    for warning in ws.get("warnings") or []:  # Friday keys atlas ignores (issue #14)
        out.print(f"  warning: {warning.get('line')}:{warning.get('column')}: {warning.get('path')}: "
                  f"{warning.get('message')}")
    out.blank()
    out.table(["signal", "provider", "concurrency", "schema (* required)", "jobs"],
              [[s["name"], s["signal"].get("provider", ""), s["signal"].get("concurrency", ""),
                schema_fields(s["signal"].get("schema")) or "-", ", ".join(s.get("jobs", []))] for s in signals],
              title="Signals", empty="No signals.")
    out.blank()
    rows: list[list[str | Text]] = []
    for job in jobs:
        steps = job.get("plannedSteps") or []
        plan = " → ".join(_step(s) for s in steps) or "-"
        rows.append([job["id"], job.get("name", ""), ", ".join(job.get("triggers", [])), plan])
    out.table(["job", "name", "triggers", "planned steps"], rows, title="Jobs", empty="No jobs.")


def _step(step: dict[str, Any]) -> str:
    kind = step.get("actionType", "agent")
    return step.get("agentName", "?") + ("" if kind == "agent" else f" ({kind})")


@workspace_app.command("remove")
@handle_errors
def workspace_remove(
    ident: WorkspaceArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Also cancel its active sessions (workspace_removed).")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a workspace from the daemon (its files are untouched).

    Refused while the workspace has active sessions unless --force, which cancels them.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        body = api.delete(f"/api/workspaces/{ident}", force="true" if force else None)
    if out.json:
        out.emit_json(body)
        return
    out.print(body.get("message") or f"Workspace '{ident}' removed")


@workspace_app.command("validate")
@handle_errors
def workspace_validate(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A workspace directory or workspace.yml file.",
                                                 show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Check a workspace.yml offline (no daemon needed).

    Prints file:line:column: path: message per error and exits 5 if there is any.
    --json prints {"ok", "file", "workspaceId", "errors": […], "warnings": […]}.
    """
    if not json_out:
        from atlas.cli.validate import validate_command

        raise typer.Exit(validate_command(str(path)))
    from atlas.config.loader import load_workspace

    loaded = load_workspace(str(path))
    Output(True).emit_json({
        "ok": not loaded.errors,
        "file": str(loaded.file),
        "workspaceId": loaded.id,
        "errors": [e.to_dict() for e in loaded.errors],
        "warnings": [w.to_dict() for w in loaded.warnings],
    })
    raise typer.Exit(EXIT_INVALID if loaded.errors else EXIT_OK)
