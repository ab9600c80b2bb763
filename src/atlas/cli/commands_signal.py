"""`atlas signal list` and `atlas signal trigger` (spec §11, §5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from atlas.cli.client import EXIT_DETACHED, EXIT_USAGE, Api, CliError, exit_code_for_status
from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, WorkspaceOpt, complete_signal, connect, handle_errors
from atlas.cli.follow import Tracker, final_line, follow_run, make_renderer
from atlas.cli.render import Output, compact
from atlas.cli.sse import parse_sse
from atlas.config.durations import parse_duration
from atlas.sessions.reducer import summarize

signal_app = typer.Typer(help="Signals: list a workspace's signals and trigger jobs.", no_args_is_help=True)


def schema_fields(schema: dict[str, Any] | None) -> str:
    """`count*: integer, interval: number` — the payload fields of a signal schema (`*` = required)."""
    if not isinstance(schema, dict):
        return ""
    required = set(schema.get("required") or [])
    props = schema.get("properties") or {}
    parts = []
    for name, prop in props.items():
        kind = prop.get("type", "any") if isinstance(prop, dict) else "any"
        if isinstance(prop, dict) and "enum" in prop:
            kind = "|".join(json.dumps(v) for v in prop["enum"])
        parts.append(f"{name}{'*' if name in required else ''}: {kind if isinstance(kind, str) else '|'.join(kind)}")
    return ", ".join(parts)


@signal_app.command("list")
@handle_errors
def signal_list(workspace: WorkspaceOpt, url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List a workspace's signals.

    Shows each signal's provider, concurrency policy, jobs and payload schema fields (* = required).
    --json prints the GET /api/workspaces/{ws}/signals answer.
    """
    out = Output(json_out)
    with connect(url, token) as api:
        body = api.get(f"/api/workspaces/{workspace}/signals")
    if out.json:
        out.emit_json(body)
        return
    rows = []
    for item in body.get("signals", []):
        sig = item.get("signal") or {}
        rows.append([item["name"], sig.get("provider", ""), sig.get("concurrency", ""), ", ".join(item.get("jobs", [])),
                     schema_fields(sig.get("schema")) or "-", sig.get("title") or sig.get("description") or ""])
    out.table(["signal", "provider", "concurrency", "jobs", "schema (* required)", "description"], rows,
              empty=f"Workspace '{workspace}' has no signals.")


def parse_data(raw: str | None) -> dict[str, Any]:
    """`--data JSON`, `--data @file.json` or `--data @-` (stdin) → the payload object; exit 2 otherwise."""
    if raw is None:
        return {}
    source, text = "--data", raw
    if raw.startswith("@"):
        name = raw[1:]
        source = f"--data {raw}"
        if name == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(name).expanduser().read_text()
            except OSError as exc:
                raise CliError(EXIT_USAGE, "invalid_data", f"{source}: cannot read {name}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(EXIT_USAGE, "invalid_data", f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                       f"column {exc.colno} (char {exc.pos})") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise CliError(EXIT_USAGE, "invalid_data", f"{source} must be a JSON object, not {kind}")
    return value


def run_url(base_url: str, session_id: str) -> str:
    """The run's page in the daemon's web UI (`/sessions/<sid>`, the UI's route): where the CLI hands over to it.

    Never carries the token (the UI asks for it, or takes a `#token=` the user adds): printed URLs end up in
    terminals, logs and chat.
    """
    return f"{base_url.rstrip('/')}/sessions/{session_id}"


def print_ids(out: Output, accepted: dict[str, Any], base_url: str | None = None) -> None:
    """The first lines of a trigger's human output: the correlationId and the sessionId (spec §11), then the
    run's UI URL when the daemon's `base_url` is given."""
    pairs = [("correlationId", accepted["correlationId"]), ("sessionId", accepted["sessionId"])]
    if base_url is not None:
        pairs.append(("url", run_url(base_url, accepted["sessionId"])))
    out.fields(pairs)


@signal_app.command("trigger")
@handle_errors
def signal_trigger(
    signal: Annotated[str, typer.Argument(metavar="SIGNAL", help="Signal id.", autocompletion=complete_signal,
                                            show_default=False)],
    workspace: WorkspaceOpt,
    data: Annotated[str | None, typer.Option(
        "--data", "-d", metavar="JSON|@FILE",
        help="The payload: a JSON object, @file.json, or @- for stdin.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="(default) Trigger, then follow the whole correlation tree live until every session ends; "
        "exit with the root session's status code. Ctrl-C detaches without cancelling.")] = False,
    nowait: Annotated[bool, typer.Option("--nowait", help="Print the ids and exit 0 at once.")] = False,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Trigger in SSE mode and print its frames; closing it (Ctrl-C) cancels the run.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", metavar="KEY",
        help="Idempotency-Key header: a retry with the same key returns the same run.")] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION",
        help="With --wait: stop waiting after e.g. 30s or 5m (exit 9); the run continues.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Trigger a signal and (by default) follow the run to its end.

    Prints the correlationId and the sessionId first. --wait (the default) triggers with nowait, then follows the
    whole correlation tree (cascaded children included) until every session has ended; Ctrl-C or closing the
    terminal never cancels the run. --json prints JSON lines: the ids, one line per durable event, then the root's
    final SessionSummary (with --nowait: the 202 answer; with --stream: one line per SSE frame).

    Exit codes: 0 completed, 6 failed or interrupted, 7 cancelled, 8 skipped, 9 --timeout passed, 130 detached
    by Ctrl-C, 2 bad --data, 3 daemon unreachable, 4 unknown workspace or signal, 5 payload rejected.
    """
    out = Output(json_out)
    if sum((wait, nowait, stream)) > 1:
        raise CliError(EXIT_USAGE, "usage_error", "choose one of --wait, --nowait and --stream")
    timeout_s = None
    if timeout is not None:
        try:
            timeout_s = parse_duration(timeout, allow_days=True)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, "usage_error", f"--timeout: {exc}") from None
    payload = parse_data(data)
    body = {"payload": payload}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
    path = f"/api/workspaces/{workspace}/signals/{signal}"
    with connect(url, token) as api:
        if stream:
            raise typer.Exit(_trigger_stream(api, out, path, body, headers))
        response = api.request("POST", path, params={"nowait": "true"}, json_body=body, headers=headers)
        accepted = response.json()
        replayed = response.headers.get("idempotent-replayed") == "true"
        if nowait:
            if out.json:
                out.emit_json(accepted)
            else:
                print_ids(out, accepted, api.url)
                if replayed:
                    out.note("(replayed: an earlier trigger with this Idempotency-Key)")
                out.note(f"Follow it with: atlas follow --correlation-id {accepted['correlationId']}")
            return
        if not out.json:
            print_ids(out, accepted, api.url)
            if replayed:
                out.note("(replayed: an earlier trigger with this Idempotency-Key)")
        header = {k: accepted[k] for k in ("correlationId", "sessionId", "workspaceId", "signalId")}
        code = follow_run(api, out, session_id=accepted["sessionId"], correlation_id=accepted["correlationId"],
                          tree=True, header=header, timeout_s=timeout_s,
                          resume_hint=f"atlas follow --correlation-id {accepted['correlationId']}")
    raise typer.Exit(code)


def _trigger_stream(api: Api, out: Output, path: str, body: dict[str, Any], headers: dict[str, str] | None) -> int:
    """SSE trigger mode (spec §5.4): JSON lines of the frames with --json, else the live timeline."""
    tracker = Tracker()
    renderer = None
    status: str | None = None
    result: dict[str, Any] | None = None
    try:
        with api.stream("POST", path, json_body=body, headers=headers, read_timeout=None) as response:
            for frame in parse_sse(response.iter_lines()):
                if frame.data == "[DONE]":
                    break
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                if out.json:
                    out.emit_json(message)
                kind, data = message.get("type"), message.get("data") or {}
                if kind == "data-session-accepted":
                    if not out.json:
                        print_ids(out, data, api.url)
                        renderer = make_renderer(out, tracker, f"Streaming session {data['sessionId'][:8]}")
                        renderer.start()
                elif kind == "data-session-event":
                    tracker.apply(data)
                    if renderer is not None:
                        renderer.event(data)
                elif kind == "data-ephemeral":
                    tracker.apply_chunk(data)
                    if renderer is not None:
                        renderer.chunk(data)
                elif kind == "data-session-finish":
                    status = data.get("status")
                elif kind in ("job-complete", "job-error"):
                    result = message
    except KeyboardInterrupt:
        if renderer is not None:
            renderer.stop(False)
        out.note("Stream closed: closing a --stream connection cancels the run; use --wait to detach safely.",
                 style="yellow")
        return EXIT_DETACHED
    except BaseException:
        if renderer is not None:
            renderer.stop(False)
        raise
    if renderer is not None:
        renderer.stop(True)
    if status is None:
        raise CliError(1, "stream_incomplete", "the stream ended before the session finished")
    if not out.json:
        views = tracker.snapshot()
        if views:
            final_line(out, summarize(next(iter(views.values()))), tracker)
        if result and result.get("type") == "job-complete" and result["data"].get("output"):
            out.print(Text("output", style="bold") if out.rich else "output", "  ",
                      compact(result["data"]["output"], 400))
    return exit_code_for_status(status)
