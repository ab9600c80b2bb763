"""The daemon's log lines (issue #18, item 3): text or JSON (`ATLAS_LOG_FORMAT=json`), with the session they belong
to, and with the run's secrets redacted whatever the format.

Why context variables: a session's work spans many modules (engine, agents, model retries, MCP calls) that do not
know which session they serve; the runner sets `session_fields` once around a run, and every asyncio task the run
starts inherits them, so each line logged inside it carries `sessionId`, `correlationId` and `workspaceId` without a
single logging call changing. Why redaction here: a model server's error message may echo the API key, a tool's
error an argument; the Templater knows every `secret()` value and key the daemon has seen, and the formatter runs
the finished line through it (`use_redactor`), so no handler ever writes one.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from atlas.jsoncodec import dumps

__all__ = ["LOG_FORMATS", "configure_logging", "session_fields", "use_redactor"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_session: ContextVar[dict[str, str] | None] = ContextVar("atlas_log_session", default=None)
_redact: Callable[[Any], Any] | None = None


@contextlib.contextmanager
def session_fields(session_id: str, correlation_id: str, workspace_id: str) -> Iterator[None]:
    """Every line logged inside (and in tasks started inside) carries these ids."""
    token = _session.set({"sessionId": session_id, "correlationId": correlation_id, "workspaceId": workspace_id})
    try:
        yield
    finally:
        _session.reset(token)


def use_redactor(redact: Callable[[Any], Any] | None) -> None:
    """Redact every formatted line with `redact` (the daemon's `Templater.redact`); None: no redaction.

    Process-wide, like logging itself: the process's one daemon installs it once its Templater exists."""
    global _redact
    _redact = redact


def _redacted(text: str) -> str:
    redact = _redact
    return text if redact is None else str(redact(text))


class TextFormatter(logging.Formatter):
    """The classic line, redacted; a session's ids are appended as `[session=…]` when there are some."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _session.get()
        if fields is not None:
            line = f"{line} [session={fields['sessionId']} correlation={fields['correlationId']}]"
        return _redacted(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` (UTC, ISO 8601), `level`, `logger`, `message`, `exc_info` (the formatted
    traceback) when there is one, the session's ids when logged inside a session's work."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                                          "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _redacted(record.getMessage()),
        }
        fields = _session.get()
        if fields is not None:
            entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = _redacted("".join(traceback.format_exception(*record.exc_info)).rstrip())
        elif record.exc_text:
            entry["exc_info"] = _redacted(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = _redacted(record.stack_info)
        return dumps(entry).decode()


def configure_logging(level: str, fmt: str) -> None:
    """The root logger's one stderr handler, in `fmt` (`text` or `json`); what `logging.basicConfig` did before."""
    root = logging.getLogger()
    if root.handlers:  # as `logging.basicConfig`: a process that configured logging already keeps its own
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
