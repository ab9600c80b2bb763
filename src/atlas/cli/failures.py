"""Why a session failed, under `atlas sessions show`'s timeline (issue #16): the traceback of a failed python step,
the stderr tail of a failed shell step and the cause chain of a failed cascade, child by child (sessionId first, so
each can be copied into `atlas sessions show`).

Why a section of its own: the timeline's table keeps one line per step, and a traceback or a chain does not fit in a
cell; printed below it, in full, a user sees the file and line or the child's complaint without `--json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text

from atlas.cli.render import Output, compact, session_label

__all__ = ["details_lines", "failure_lines", "print_failures"]

_INDENT = "  "


def details_lines(details: Mapping[str, Any], indent: str, innermost: bool = False) -> list[tuple[str, str]]:
    """(text, style) lines of an `errorDetails`: the traceback, or the stderr tail, as recorded.

    `innermost` keeps only a traceback's innermost frame and the exception (after a line saying how many were left
    out): the live view redraws within a terminal's height, where a whole traceback would push the run's tree off
    the screen; `atlas sessions show` prints it whole.
    """
    lines: list[tuple[str, str]] = []
    traceback = details.get("traceback")
    if isinstance(traceback, str) and traceback:
        frames = traceback.splitlines()
        last = max((i for i, line in enumerate(frames) if line.startswith('  File "')), default=0)
        if innermost and last > 0:
            lines.append((f"{indent}… {last} earlier traceback line{'' if last == 1 else 's'}", "dim"))
            frames = frames[last:]
        lines += [(indent + line, "") for line in frames]
    stderr = details.get("stderrTail")
    if isinstance(stderr, str) and stderr:
        exit_code = details.get("exitCode")
        lines.append((indent + "stderr (last lines" + (f", exit status {exit_code}" if exit_code is not None
                                                        else "") + "):", "bold"))
        lines += [(indent + _INDENT + line, "red") for line in stderr.splitlines()]
    return lines


def _cause_lines(cause: Mapping[str, Any], indent: str) -> list[tuple[str, str]]:
    """The chain, one nested paragraph per failed child: `caused by <sessionId>  <ws/job>  <status>`, its error, the
    step it failed in with that step's details, then its own cause one level deeper."""
    lines: list[tuple[str, str]] = []
    level: Mapping[str, Any] | None = cause
    while isinstance(level, Mapping):
        label = session_label({"workspaceId": level.get("workspaceId"), "jobName": level.get("jobName")})
        lines.append((f"{indent}caused by {level.get('sessionId', '?')}  {label}  {level.get('status', 'failed')}",
                      "bold"))
        inner = indent + _INDENT
        if level.get("error") or level.get("errorCode"):
            text = f"{level.get('errorCode') or 'error'}: {compact(level.get('error') or '', 300)}"
            lines.append((inner + text, "red"))
        if level.get("stepNumber") is not None:
            lines.append((f"{inner}in step {level['stepNumber']} {level.get('agentName', '?')}", "dim"))
        details = level.get("errorDetails")
        if isinstance(details, Mapping):
            lines += details_lines(details, inner)
        level = level.get("cause")
        indent = inner
    return lines


def failure_lines(view: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every failed step's details and cause chain, then the session's own cause if no step showed it."""
    lines: list[tuple[str, str]] = []
    shown_cause = False
    for block in view.get("agentBlocks") or []:
        if not isinstance(block, Mapping) or block.get("status") != "failed":
            continue
        details, cause = block.get("errorDetails"), block.get("cause")
        if not isinstance(details, Mapping) and not isinstance(cause, Mapping):
            continue
        if lines:
            lines.append(("", ""))
        head = f"step {block.get('stepNumber', '-')} {block.get('agentName', '?')} failed"
        error = f"{block.get('errorCode') or 'error'}: {block.get('error') or ''}"
        lines.append((f"{head}: {compact(error, 300)}", "bold red"))
        if isinstance(details, Mapping):
            lines += details_lines(details, _INDENT)
        if isinstance(cause, Mapping):
            lines += _cause_lines(cause, _INDENT)
            shown_cause = True
    session_cause = view.get("cause")
    if isinstance(session_cause, Mapping) and not shown_cause:
        if lines:
            lines.append(("", ""))
        lines.append(("session failed", "bold red"))
        lines += _cause_lines(session_cause, _INDENT)
    return lines


def print_failures(out: Output, view: Mapping[str, Any]) -> None:
    """Print the section (nothing for a session without recorded details or causes)."""
    lines = failure_lines(view)
    if not lines:
        return
    out.blank()
    out.print(Text("Failure", style="bold") if out.rich else "Failure")
    for text, style in lines:
        out.print(Text(text, style=style) if out.rich and style else text)
