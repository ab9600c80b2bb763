"""Human and machine output for the CLI (spec §11).

Two human modes: *rich* (stdout is a TTY and NO_COLOR is unset: colours, tables with borders, spinners, live
views) and *plain* (anything else: aligned text columns, no colour, no control sequences, never wrapped, so it is
stable for pipes and tests). `--json` prints exactly one JSON document (or JSON lines for the follow commands) on
stdout; messages and errors always go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from atlas.cli.client import CliError

Cell = str | Text

STATUS_STYLE = {
    "queued": "dim", "pending": "dim", "active": "bold blue", "running": "bold blue", "completed": "bold green",
    "failed": "bold red", "interrupted": "bold red", "cancelled": "bold yellow", "skipped": "yellow",
}
STATUS_SYMBOL = {
    "queued": "○", "pending": "·", "active": "●", "running": "●", "completed": "✓", "failed": "✗",
    "interrupted": "!", "cancelled": "⊘", "skipped": "↷",
}


class Output:
    """Where and how a command prints. One per command invocation."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json = json_mode
        no_color = bool(os.environ.get("NO_COLOR"))
        self.console = Console(highlight=False, soft_wrap=False)
        self.rich = self.console.is_terminal and not no_color and not json_mode
        self.err_console = Console(stderr=True, highlight=False)
        self.err_rich = self.err_console.is_terminal and not no_color

    # ---------------------------------------------------------------- machine output

    def emit_json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def emit_json_pretty(self, document: Any) -> None:
        """One JSON document, indented (still a single parseable document)."""
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        sys.stdout.flush()

    # ---------------------------------------------------------------- human output

    def print(self, *parts: Cell) -> None:
        """One line on stdout built from plain strings and styled Texts (styles dropped in plain mode)."""
        if self.rich:
            self.console.print(Text.assemble(*parts), soft_wrap=True)
        else:
            sys.stdout.write("".join(p.plain if isinstance(p, Text) else p for p in parts) + "\n")
            sys.stdout.flush()

    def blank(self) -> None:
        self.print("")

    def note(self, message: str, style: str = "dim") -> None:
        """A message on stderr (progress notes, hints): never mixed into stdout, so --json stays parseable."""
        if self.err_rich:
            self.err_console.print(Text(message, style=style), soft_wrap=True)
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def error(self, err: CliError) -> None:
        """The error as `atlas: [code: ]message[; hint]` on stderr, plus details; with --json, also on stdout."""
        prefix = f"{err.code}: " if err.status is not None else ""
        line = f"atlas: {prefix}{err.message}" + (f"; {err.hint}" if err.hint else "")
        lines = [line, *(f"  {d}" for d in format_details(err.details))]
        if self.err_rich:
            for i, text in enumerate(lines):
                self.err_console.print(Text(text, style="bold red" if i == 0 else "red"), soft_wrap=True)
        else:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
        if self.json:
            self.emit_json(err.document())

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Cell]], *, title: str | None = None,
              empty: str | None = None) -> None:
        if not rows and empty:
            self.note(empty)
            return
        if self.rich:
            table = Table(title=Text(title, style="bold") if title else None, title_justify="left",
                          header_style="bold", show_edge=False, pad_edge=False)
            for col in columns:
                table.add_column(col, overflow="fold")
            for row in rows:  # plain strings become Text: data is never read as Rich markup
                table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
            self.console.print(table)
            return
        if title:
            self.print(title)
        plain = [[c.plain if isinstance(c, Text) else c for c in row] for row in rows]
        header = [c.upper() for c in columns]
        widths = [max(len(r[i]) for r in [header, *plain]) for i in range(len(columns))]
        for row in [header, *plain]:
            cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
            sys.stdout.write("  ".join(cells).rstrip() + "\n")
        sys.stdout.flush()

    def fields(self, pairs: Sequence[tuple[str, Cell]]) -> None:
        """`label  value` lines with aligned values."""
        width = max((len(k) for k, _ in pairs), default=0)
        for key, value in pairs:
            self.print(Text(key.ljust(width), style="bold") if self.rich else key.ljust(width), "  ", value)


def format_details(details: Any) -> list[str]:
    """API error `details` as readable lines: file:line:col errors, path: message pairs, or key: value."""
    if details is None:
        return []
    if isinstance(details, list):
        out = []
        for item in details:
            if isinstance(item, dict) and "line" in item and "file" in item:
                path = f" {item['path']}:" if item.get("path") else ""
                out.append(f"{item['file']}:{item['line']}:{item.get('column', 0)}:{path} {item.get('message', '')}")
            elif isinstance(item, dict) and "message" in item:
                out.append(f"{item.get('path') or '(payload)'}: {item['message']}")
            else:
                out.append(compact(item, 200))
        return out
    if isinstance(details, dict):
        return [f"{k}: {v if isinstance(v, str) else compact(v, 200)}" for k, v in details.items() if v is not None]
    return [str(details)]


# -------------------------------------------------------------------- formatting helpers


def short_id(ident: str | None) -> str:
    return (ident or "")[:8]


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def fmt_duration(ms: float | int | None) -> str:
    """203ms, 1.2s, 3m 12s, 1h 2m, 2d 3h."""
    if ms is None:
        return "-"
    ms = max(0, float(ms))
    if ms < 1000:
        return f"{int(ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def rel_time(text: str | None, reference: datetime | None = None) -> str:
    """'3s ago', '5m ago', '2h ago', '3d ago' (or 'in 3s' for the future); '-' when unknown."""
    moment = parse_time(text)
    if moment is None:
        return "-"
    delta = ((reference or now()) - moment).total_seconds()
    future = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if delta >= size:
            amount = f"{int(delta // size)}{unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def local_time(text: str | None, with_date: bool = False) -> str:
    moment = parse_time(text)
    if moment is None:
        return "-"
    local = moment.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S") if with_date else local.strftime("%H:%M:%S.") + \
        f"{local.microsecond // 1000:03d}"


def elapsed_ms(view: dict[str, Any]) -> float | None:
    """durationMs of a finished session, else the time since it started (or was queued)."""
    if view.get("durationMs") is not None:
        return float(view["durationMs"])
    start = parse_time(view.get("startedAt") or view.get("queuedAt"))
    if start is None:
        return None
    return (now() - start).total_seconds() * 1000


def status_text(status: str, rich: bool = True, symbol: bool = True) -> Text:
    if not rich:
        return Text(status)
    mark = STATUS_SYMBOL.get(status, "?") + " " if symbol else ""
    return Text(mark + status, style=STATUS_STYLE.get(status, ""))


def compact(value: Any, limit: int = 120, *, tight: bool = False) -> str:
    """One line of at most `limit` characters; `tight` drops the spaces after `,` and `:` (tool arguments read
    like the JSON the model sent, `{"a":2,"b":3}`)."""
    separators = (",", ":") if tight else (", ", ": ")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=separators)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def waiting_text(waiting_for: Any, short: bool = False) -> str:
    """A queued session's `waitingFor` (issue #16) as one line: "waiting for <ids> (concurrency)", or "waiting for
    a runner to pick it up (pending)"; `short` ids for a line among many (`--follow`)."""
    if not isinstance(waiting_for, dict):
        return "waiting"
    reason = waiting_for.get("reason") or "?"
    if reason == "pending":
        return "waiting for a runner to pick it up (pending)"
    ids = [sid for sid in waiting_for.get("sessionIds") or [] if isinstance(sid, str)]
    if not ids:
        return f"waiting ({reason})"
    return f"waiting for {', '.join(short_id(sid) if short else sid for sid in ids)} ({reason})"


def session_label(view: dict[str, Any]) -> str:
    return f"{view.get('workspaceId') or '?'}/{view.get('jobName') or '?'}"
