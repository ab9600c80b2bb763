"""`atlas chat`: talk to a workspace (issue #17, item 5).

Interactive by default: a prompt, Enter sends, the reply streams as it is written, and each tool call and its
result show as they happen (a job the turn started is named with its session id). `--message TEXT` sends one
turn and exits (scriptable); with `--json` it prints the reply's SSE events as JSON lines `{event, data}`.
Exit codes: 0 when the reply completed, 6 when it failed or was interrupted, 3 daemon unreachable, 4 unknown
workspace or chat, 1 a chat that is busy or unavailable.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from atlas.cli.client import Api, CliError
from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, WorkspaceOpt, connect, handle_errors
from atlas.cli.render import Output, compact
from atlas.cli.sse import parse_sse

EXIT_REPLY_FAILED = 6


def _say(out: Output, text: str, style: str | None = None) -> None:
    """Reply text as it streams: written without a newline (a delta is part of a line)."""
    if out.rich and style:
        out.console.print(Text(text, style=style), end="", soft_wrap=True)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _show(out: Output, event: str, data: dict[str, Any]) -> None:
    if event == "text-delta":
        _say(out, str(data.get("delta", "")))
    elif event == "tool-call":
        _say(out, f"\n→ {data.get('toolName')}({compact(data.get('args'), 200)})\n", "cyan")
    elif event == "tool-result":
        mark = "✗" if data.get("error") else "✓"
        _say(out, f"{mark} {data.get('toolName')}: {compact(data.get('result'), 300)}\n", "cyan")
    elif event == "session":
        _say(out, f"  run {data.get('jobName')} {data.get('sessionId')}: {data.get('status')}\n", "dim")
    elif event == "done":
        status = data.get("status")
        _say(out, "\n")
        if status != "completed":
            out.note(f"(reply {status}{': ' + str(data['error']) if data.get('error') else ''})", style="yellow")


def _turn(api: Api, out: Output, workspace: str, message: str, chat_id: str | None) -> tuple[str | None, str]:
    """Send one message, show (or emit) the reply's events; (the chat's id, the reply's status)."""
    body: dict[str, Any] = {"message": message}
    if chat_id:
        body["chatId"] = chat_id
    status = "interrupted"
    with api.stream("POST", f"/api/workspaces/{workspace}/chat", json_body=body, read_timeout=None) as response:
        for frame in parse_sse(response.iter_lines()):
            try:
                data = json.loads(frame.data)
            except ValueError:
                continue
            if out.json:
                out.emit_json({"event": frame.event, "data": data})
            else:
                _show(out, frame.event, data)
            if frame.event == "chat":
                chat_id = data.get("chatId")
            elif frame.event == "done":
                status = str(data.get("status"))
    return chat_id, status


def chat_command(
    workspace: WorkspaceOpt,
    chat: Annotated[str | None, typer.Option("--chat", metavar="ID", help="Continue this chat.")] = None,
    message: Annotated[str | None, typer.Option(
        "--message", "-m", metavar="TEXT", help="Send one message, print the reply and exit.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Chat with a workspace: its agent runs the workspace's jobs as tools and remembers what you ask it to.

    Without --message: an interactive loop (Enter sends; Ctrl-D or Ctrl-C ends it), the reply streamed with tool
    calls shown as they happen. --message TEXT sends one turn; with --json each SSE event of the reply is one
    JSON line {event, data}. --chat ID continues a chat (its id is printed when a new one starts).
    """
    out = Output(json_out)
    with connect(url, token) as api:
        if message is not None:
            _, status = _turn(api, out, workspace, message, chat)
            raise typer.Exit(0 if status == "completed" else EXIT_REPLY_FAILED)
        if out.json:
            raise CliError(2, "usage_error", "--json needs --message (one turn)")
        out.note("Chatting with workspace " + workspace + ". Enter sends; Ctrl-D ends.")
        while True:
            try:
                line = input("you> ")
            except (EOFError, KeyboardInterrupt):
                _say(out, "\n")
                break
            if not line.strip():
                continue
            _say(out, "atlas> ", "bold")
            new_chat = chat is None
            chat, _ = _turn(api, out, workspace, line, chat)
            if new_chat and chat:
                out.note(f"(chat {chat}: continue it later with --chat {chat})")


chat_command = handle_errors(chat_command)
