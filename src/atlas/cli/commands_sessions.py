"""`atlas sessions list|show|follow|cancel|rerun|logs`, `atlas follow --correlation-id` and `atlas ps` (spec §11)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import httpx
import typer
from rich.text import Text

from atlas.cli.client import EXIT_NOT_FOUND, EXIT_USAGE, Api, CliError
from atlas.cli.commands_signal import parse_data, print_ids, run_url
from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, complete_session, complete_workspace, connect, handle_errors
from atlas.cli.failures import print_failures
from atlas.cli.follow import follow_run
from atlas.cli.render import (
    Output,
    compact,
    elapsed_ms,
    fmt_duration,
    local_time,
    now,
    parse_time,
    rel_time,
    session_label,
    short_id,
    status_text,
    waiting_text,
)
from atlas.cli.sse import parse_sse
from atlas.config.durations import parse_duration
from atlas.sessions.events import format_iso
from atlas.sessions.reducer import is_terminal

sessions_app = typer.Typer(help="Sessions (runs): list, show, follow and cancel them.", no_args_is_help=True)

SessionArg = Annotated[str, typer.Argument(
    metavar="ID", help="Session id, or a unique prefix of at least 8 characters.", autocompletion=complete_session,
    show_default=False)]
ListWorkspaceOpt = Annotated[str | None, typer.Option(
    "--workspace", "-w", metavar="WS", help="Only sessions of this workspace.", autocompletion=complete_workspace)]
CorrelationOpt = Annotated[str | None, typer.Option(
    "--correlation-id", "-c", metavar="ID", help="Only the sessions of this correlation tree (all of them).")]
JobOpt = Annotated[str | None, typer.Option("--job", "-j", metavar="JOB", help="Only sessions of this job id.")]
StatusOpt = Annotated[str | None, typer.Option(
    "--status", "-s", metavar="S[,S…]",
    help="Only these statuses: queued, active, completed, failed, skipped, cancelled, interrupted.")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", metavar="WHEN", help="Only sessions started since a duration ago (10m, 2h, 7d) or an RFC 3339 time.")]
LimitOpt = Annotated[int | None, typer.Option(
    "--limit", "-n", metavar="N", min=1,
    help="At most N sessions (default 20; with --correlation-id, the whole tree).")]


def since_param(since: str | None) -> str | None:
    if since is None:
        return None
    if parse_time(since) is not None:
        return since
    try:
        seconds = parse_duration(since, allow_days=True)
    except ValueError:
        raise CliError(EXIT_USAGE, "usage_error",
                       f"--since: {since!r} is neither a duration (10m, 2h, 7d) nor an RFC 3339 time") from None
    return format_iso(now() - timedelta(seconds=seconds))


def tree_order(sessions: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Parents before children (siblings by queue time), with each session's nesting level."""
    ids = {s["sessionId"] for s in sessions}
    ordered = sorted(sessions, key=lambda s: (s.get("queuedAt") or "", s["sessionId"]))
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for s in ordered:
        parent = s.get("parentSessionId")
        if isinstance(parent, str) and parent in ids:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(s: dict[str, Any], level: int) -> None:
        out.append((level, s))
        for child in children.get(s["sessionId"], []):
            walk(child, level + 1)

    for root in roots:
        walk(root, 0)
    return out


def print_sessions(out: Output, sessions: list[dict[str, Any]], *, tree: bool, empty: str) -> None:
    rows = []
    pairs = tree_order(sessions) if tree else [(0, s) for s in sessions]
    for level, s in pairs:
        job = ("  " * (level - 1) + "└ " if level else "") + session_label(s)
        duration = fmt_duration(s.get("durationMs")) if is_terminal(s.get("status")) else \
            fmt_duration(elapsed_ms(s)) + "…"
        rows.append([short_id(s["sessionId"]), job, status_text(s["status"], out.rich),
                     rel_time(s.get("startedAt")), duration, s.get("correlationId", "")])
    out.table(["id", "job", "status", "started", "duration", "correlationId"], rows, empty=empty)


def list_command(out: Output, api: Api, *, workspace: str | None = None, correlation_id: str | None = None,
                 job: str | None = None, status: str | None = None, since: str | None = None,
                 limit: int | None = None) -> None:
    filters = {"workspaceId": workspace, "correlationId": correlation_id, "jobName": job, "status": status,
               "since": since_param(since)}
    filters = {k: v for k, v in filters.items() if v is not None}
    if limit is None and not correlation_id:
        limit = 20
    sessions = api.list_sessions(limit=limit, **filters)
    if out.json:
        out.emit_json({"sessions": sessions})
        return
    empty = "No sessions match." if filters else "No sessions yet: trigger one with `atlas signal trigger`."
    print_sessions(out, sessions, tree=bool(correlation_id), empty=empty)


@sessions_app.command("list")
@handle_errors
def sessions_list(
    workspace: ListWorkspaceOpt = None,
    correlation_id: CorrelationOpt = None,
    job: JobOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    limit: LimitOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List sessions, newest first.

    Shows short id, job, status, start, duration and correlationId. With --correlation-id the whole tree is
    listed, children indented under their parents. --json prints {"sessions": [SessionSummary…]}.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        list_command(out, api, workspace=workspace, correlation_id=correlation_id, job=job, status=status,
                     since=since, limit=limit)


def show_view(out: Output, view: dict[str, Any], children: list[dict[str, Any]], base_url: str | None = None) -> None:
    """The human `sessions show`; with the daemon's `base_url`, the run's UI URL follows the correlationId."""
    rich = out.rich
    status = view.get("status", "?")
    out.print(Text(session_label(view), style="bold") if rich else session_label(view), "  ",
              status_text(status, rich))
    fields: list[tuple[str, str | Text]] = [
        ("session", view.get("sessionId", "")),
        ("correlationId", view.get("correlationId", "")),
        *([("url", run_url(base_url, view.get("sessionId", "")))] if base_url is not None else []),
        ("workspace", view.get("workspaceId", "")),
        ("job", view.get("jobName", "")),
        ("signal", f"{view.get('signalId', '')} (trigger: {view.get('trigger', '?')})"),
        ("task", view.get("task", "")),
        ("queued", f"{local_time(view.get('queuedAt'), True)} ({rel_time(view.get('queuedAt'))})"),
    ]
    if view.get("rerunOf"):
        fields.append(("re-run of", view["rerunOf"]))
    if status == "queued" and view.get("waitingFor"):
        fields.append(("waiting", waiting_text(view["waitingFor"])))
    if view.get("duplicateOf"):
        fields.append(("skipped", f"duplicate of {view['duplicateOf']}"))
    if view.get("startedAt") and view.get("startedAt") != view.get("queuedAt"):
        fields.append(("started", f"{local_time(view.get('startedAt'), True)} ({rel_time(view.get('startedAt'))})"))
    if view.get("completedAt"):
        fields.append(("completed",
                       f"{local_time(view.get('completedAt'), True)} ({rel_time(view.get('completedAt'))})"))
    running = "" if is_terminal(status) else " so far"
    fields.append(("duration", fmt_duration(elapsed_ms(view)) + running))
    if view.get("parentSessionId"):
        fields.append(("parent", f"{view['parentSessionId']} (depth {view.get('depth')})"))
        fields.append(("root", view.get("rootSessionId", "")))
    else:
        fields.append(("lineage", "root session (depth 0)"))
    for child in children:
        fields.append(("child", Text.assemble(f"{child['sessionId']}  {session_label(child)}  ",
                                              status_text(child.get("status", "?"), rich))))
    if view.get("payload") not in (None, {}):
        fields.append(("payload", compact(view["payload"], 300)))
    if view.get("error") or view.get("errorCode"):
        fields.append(("error", Text(f"{view.get('errorCode') or 'error'}: {view.get('error') or ''}",
                                     style="red" if rich else "")))
    summary = view.get("aiSummary") or {}
    if summary.get("summary"):
        fields.append(("summary", summary["summary"]))
        for detail in summary.get("keyDetails") or []:
            fields.append(("  " + str(detail.get("label", "")), str(detail.get("value", ""))))
    out.fields(fields)
    out.blank()
    rows = []
    long_outputs: list[tuple[str, Any]] = []
    for block in view.get("agentBlocks") or []:
        step = block.get("stepNumber")
        detail = ""
        if block.get("status") == "failed":
            detail = f"{block.get('errorCode') or 'error'}: {block.get('error') or ''}"
        if block.get("childSessionId"):  # a signal step: its output is the child's result, shown by the child
            output = block.get("output")
            child_status = output.get("status", "") if isinstance(output, dict) else ""
            detail = f"{detail} → " if detail else ""
            detail += f"child {short_id(block['childSessionId'])} {child_status}".rstrip()
        elif block.get("output") is not None:
            text = compact(block["output"], 100)
            detail = f"{detail} → {text}" if detail else text
            if text.endswith("…"):
                long_outputs.append((f"step {step} {block.get('agentName', '?')}", block["output"]))
        duration = fmt_duration(block["durationMs"]) if block.get("durationMs") is not None else \
            (fmt_duration(elapsed_ms({"startedAt": block["startedAt"]})) + "…"
             if block.get("status") == "running" and block.get("startedAt") else "-")
        shown = block_status(view, block)
        rows.append([str(step) if step is not None else "-", block.get("agentName", "?"),
                     block.get("actionType", "agent"), status_text(shown, rich), duration,
                     Text(detail, style="red" if rich and shown == "failed" else "")])
    out.table(["#", "step", "type", "status", "duration", "output / error"], rows, title="Timeline",
              empty="No steps.")
    print_failures(out, view)  # tracebacks, stderr tails and cause chains, in full (issue #16)
    for label, output in long_outputs:  # outputs the table had to cut, in full (up to 40 lines each)
        out.blank()
        out.print(Text(f"{label} output", style="bold") if rich else f"{label} output")
        lines = json.dumps(output, ensure_ascii=False, indent=2).splitlines()
        for line in lines[:40]:
            out.print("  " + line)
        if len(lines) > 40:
            out.print(f"  … {len(lines) - 40} more lines (atlas sessions show {view.get('sessionId')} --json)")



def block_status(view: dict[str, Any], block: dict[str, Any]) -> str:
    """A step's status as shown: a step the run's cancel cut short is recorded `failed` with the cancel's error code
    (the block statuses are a published contract), and is shown `cancelled`, as the run page does."""
    status = str(block.get("status", "?"))
    if status == "failed" and view.get("status") == "cancelled" and block.get("errorCode") == view.get("errorCode"):
        return "cancelled"
    return status

@sessions_app.command("show")
@handle_errors
def sessions_show(ident: SessionArg, url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Show a session: lineage and the timeline of its steps.

    Shows the header, the correlationId, lineage (parent, root, children), payload, error, and one row per step
    with its status, duration, output or error. --json prints the SessionView.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        sid = api.resolve_session_id(ident)
        view = api.get(f"/api/sessions/{sid}")
        if out.json:
            out.emit_json(view)
            return
        children = api.get(f"/api/sessions/{sid}/children").get("sessions", [])
    show_view(out, view, children, api.url)


@sessions_app.command("follow")
@handle_errors
def sessions_follow(
    ident: SessionArg,
    timeout: Annotated[str | None, typer.Option("--timeout", metavar="DURATION",
                                                help="Stop following after e.g. 5m (exit 9).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow one session live until it ends.

    Exits with the session's status code (0 completed, 6 failed or interrupted, 7 cancelled, 8 skipped). Ctrl-C
    detaches (exit 130) and never cancels. --json prints JSON lines: the ids, one line per durable event, then
    the final SessionSummary.
    """
    out = Output(json_out)
    timeout_s = _timeout(timeout)
    with connect(url, token) as api:
        sid = api.resolve_session_id(ident)
        view = api.get(f"/api/sessions/{sid}")
        header = {"correlationId": view.get("correlationId"), "sessionId": sid,
                  "workspaceId": view.get("workspaceId"), "signalId": view.get("signalId")}
        code = follow_run(api, out, session_id=sid, correlation_id=view.get("correlationId") or "", tree=False,
                          header=header, resume_hint=f"atlas sessions follow {sid}", timeout_s=timeout_s)
    raise typer.Exit(code)


def _timeout(timeout: str | None) -> float | None:
    if timeout is None:
        return None
    try:
        return parse_duration(timeout, allow_days=True)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, "usage_error", f"--timeout: {exc}") from None


@sessions_app.command("cancel")
@handle_errors
def sessions_cancel(
    ident: SessionArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a session and its descendants.

    Cancels a queued or active session and every non-terminal descendant, then prints the final status. Asks
    first when run interactively (skip with --yes). --json prints the API's answer.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        sid = api.resolve_session_id(ident)
        if not yes and not out.json and out.console.is_terminal and typer.get_text_stream("stdin").isatty():
            view = api.get(f"/api/sessions/{sid}")
            if not typer.confirm(f"Cancel {session_label(view)} {short_id(sid)} ({view.get('status')}) and its "
                                 "descendants?"):
                raise typer.Exit(1)
        result = api.delete(f"/api/sessions/{sid}")
    if out.json:
        out.emit_json(result)
        return
    cancelled = result.get("cancelled") or []
    tail = f"; also cancelled {len(cancelled)} descendant{'s' if len(cancelled) != 1 else ''}" if cancelled else ""
    if result.get("cancelRequested"):
        out.print(f"Cancel requested for {sid}; it is still {result.get('status')}{tail}")
    else:
        out.print(f"Session {sid} is now ", status_text(result.get("status", "?"), out.rich), tail)


def _payload_option(raw: str) -> dict[str, Any]:
    """`--payload` read like `signal trigger --data` (JSON, @file, @-), its errors naming `--payload`."""
    try:
        return parse_data(raw)
    except CliError as err:
        err.message = err.message.replace("--data", "--payload", 1)
        raise


@sessions_app.command("rerun")
@handle_errors
def sessions_rerun(
    ident: SessionArg,
    payload: Annotated[str | None, typer.Option(
        "--payload", "-d", metavar="JSON|@FILE",
        help="Another payload: a JSON object, @file.json, or @- for stdin. Default: the original payload.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the new run live until it ends and exit with its status code.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-run a finished session: its job again, with the same payload (or --payload).

    Prints the new run's correlationId and sessionId first; the new run records `rerunOf` (the session re-run).
    A session still queued or active cannot be re-run (exit 1). --json prints the API's 202 answer.
    """
    out = Output(json_out)
    body = {"payload": _payload_option(payload)} if payload is not None else {}
    with connect(url, token) as api:
        sid = api.resolve_session_id(ident)
        accepted = api.post(f"/api/sessions/{sid}/rerun", body)
        if out.json and not wait:
            out.emit_json(accepted)
            return
        if not out.json:
            print_ids(out, accepted, api.url)
            out.note(f"Re-run of {sid}")
        if not wait:
            out.note(f"Follow it with: atlas sessions follow {accepted['sessionId']}")
            return
        header = {k: accepted[k] for k in ("correlationId", "sessionId", "workspaceId", "signalId")}
        code = follow_run(api, out, session_id=accepted["sessionId"], correlation_id=accepted["correlationId"],
                          tree=True, header=header, resume_hint=f"atlas sessions follow {accepted['sessionId']}")
    raise typer.Exit(code)


@handle_errors
def follow_command(
    correlation_id: Annotated[str, typer.Option("--correlation-id", "-c", metavar="ID",
                                                help="The correlationId of the tree to follow.")],
    timeout: Annotated[str | None, typer.Option("--timeout", metavar="DURATION",
                                                help="Stop following after e.g. 5m (exit 9).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow a whole correlation tree live until every session has ended.

    Follows the root and every cascaded child, also children created later, and exits with the root's status
    code. Ctrl-C detaches (exit 130) and never cancels. --json prints JSON lines as `sessions follow` does.
    """
    out = Output(json_out)
    timeout_s = _timeout(timeout)
    with connect(url, token) as api:
        tree = api.list_sessions(correlationId=correlation_id)
        if not tree:
            raise CliError(EXIT_NOT_FOUND, "correlation_not_found", f"no sessions with correlationId {correlation_id}")
        root = next((s for s in tree if not s.get("parentSessionId")), min(tree, key=lambda s: s.get("depth", 0)))
        header = {"correlationId": correlation_id, "sessionId": root["sessionId"],
                  "workspaceId": root.get("workspaceId"), "signalId": root.get("signalId")}
        code = follow_run(api, out, session_id=root["sessionId"], correlation_id=correlation_id, tree=True,
                          header=header, resume_hint=f"atlas follow --correlation-id {correlation_id}",
                          timeout_s=timeout_s)
    raise typer.Exit(code)


@handle_errors
def ps_command(
    workspace: ListWorkspaceOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the queued and active sessions.

    The same as `atlas sessions list --status queued,active` (without a limit).
    """
    out = Output(json_out)
    with connect(url, token) as api:
        sessions = api.list_sessions(status="queued,active", workspaceId=workspace)
    if out.json:
        out.emit_json({"sessions": sessions})
        return
    print_sessions(out, sessions, tree=False, empty="No queued or active sessions.")


def _print_log_lines(out: Output, lines: list[dict[str, Any]]) -> None:
    """`HH:MM:SS.mmm [step N] stream | text` per line (local time); --json: one JSON line per log line."""
    for line in lines:
        if out.json:
            out.emit_json(line)
            continue
        stream = str(line.get("stream"))
        style = "red" if stream == "stderr" else "yellow" if stream == "atlas" else "dim"
        out.print(Text(local_time(line.get("ts")), style="dim"), f" [step {line.get('stepNumber')}] ",
                  Text(stream, style=style), " | ", str(line.get("text", "")))


def _follow_logs(api: Api, out: Output, sid: str) -> None:
    """Print the log as the daemon streams it (SSE), resuming after the last line seen if the stream drops, until
    the session has ended."""
    cursor: str | None = None
    while True:
        params = {"follow": "true", **({"after": cursor} if cursor else {})}
        try:
            with api.stream("GET", f"/api/sessions/{sid}/logs", params=params, read_timeout=None) as response:
                for frame in parse_sse(response.iter_lines()):
                    if frame.event == "logs":
                        page = json.loads(frame.data)
                        _print_log_lines(out, page.get("lines", []))
                        cursor = page.get("nextCursor") or cursor
                    elif frame.event == "end":
                        return
        except httpx.TransportError:
            out.note("Log stream dropped; reconnecting…")


@sessions_app.command("logs")
@handle_errors
def sessions_logs(
    ident: SessionArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print what a session's steps wrote: stdout, stderr, logs (issue #16).

    One line per line written: `HH:MM:SS.mmm [step N] stream | text`, in the order written, kept with the run
    after it ended. --follow prints new lines live until the run ends (Ctrl-C detaches, exit 130). --json prints
    one JSON object per line ({ts, stepNumber, stream, text}).
    """
    out = Output(json_out)
    with connect(url, token) as api:
        sid = api.resolve_session_id(ident)
        if follow:
            try:
                _follow_logs(api, out, sid)
            except KeyboardInterrupt:
                out.note(f"Detached. Resume with: atlas sessions logs {sid} --follow")
                raise typer.Exit(130) from None
            return
        cursor: str | None = None
        while True:
            page = api.get(f"/api/sessions/{sid}/logs", limit=5000, **({"after": cursor} if cursor else {}))
            _print_log_lines(out, page.get("lines", []))
            cursor = page.get("nextCursor")
            if page.get("ended") or not page.get("lines"):
                return
