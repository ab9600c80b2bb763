"""What every agent receives (`AgentContext`, the `ctx` of spec §2.5) and how it fails (`StepError`)."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MAX_LOG_LINE_CHARS", "AgentContext", "StepError"]

log = logging.getLogger(__name__)

#: Log lines are cut to this many characters so that one chunk stays far below the 64 KiB chunk limit (§10.6).
MAX_LOG_LINE_CHARS = 8 * 1024


class StepError(Exception):
    """A step failed with a session errorCode (§3.1); `output`, when set, is still recorded on the step."""

    def __init__(self, code: str, message: str, output: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.output = output
        #: The tool calls an `llm` step made before it failed, still recorded on its `step:complete`.
        self.tool_calls: list[dict[str, Any]] | None = None
        #: Token usage of a failed `llm` step (`inputTokens`, `outputTokens`, `model`), when known.
        self.usage: Any = None
        #: `errorDetails` (issue #16): a python step's `{type, message, traceback}`, a shell step's stderr tail.
        self.details: dict[str, Any] | None = None
        #: `cause` (issue #16): the failed child session behind a `signal` step's error.
        self.cause: dict[str, Any] | None = None


def _cut(line: str) -> str:
    """`line`, or its first MAX_LOG_LINE_CHARS characters and an ellipsis."""
    return line[:MAX_LOG_LINE_CHARS] + "…" if len(line) > MAX_LOG_LINE_CHARS else line


def _no_sink(chunk: dict[str, Any]) -> None:
    """Default sink: chunks are live-only and may be dropped (§3.3), so dropping them all is valid."""


def _empty_results() -> Mapping[str, Any]:
    return types.MappingProxyType({})


class LlmObserver(Protocol):
    """What an `llm` step reports to metrics (`atlas.observability.metrics.Metrics`): each model turn (with its
    retries) and each tool call. The runtime hands it over on the step's context, so no agent imports metrics."""

    def model_call(self, provider: str, model: str, ok: bool, seconds: float, input_tokens: int,
                   output_tokens: int) -> None: ...

    def tool_call(self, server: str | None, ok: bool, seconds: float) -> None: ...


@dataclass(kw_only=True)
class AgentContext:
    """The `ctx` handed to agents: exactly the members of §2.5, plus the workspace dir and a chunk sink.

    `results` is wrapped in a `MappingProxyType` so that workspace code cannot rewrite earlier outputs. The
    sink is supplied by the runtime; it must be thread-safe and non-blocking because sync python agents call
    `emit_progress` from a worker thread while the event loop keeps running.
    """

    workspace_dir: Path
    input: Any = None
    prompt: str | None = None
    payload: Any = field(default_factory=dict)
    signal: dict[str, Any] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None
    session: dict[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=_empty_results)
    params: dict[str, Any] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    _progress_sink: Callable[[dict[str, Any]], None] = field(default=_no_sink, repr=False)
    #: Metrics of the step's model and tool calls (the runtime's); None: not observed.
    _llm_observer: LlmObserver | None = field(default=None, repr=False)
    #: An `llm` step's tool calls, recorded as they end (read by the runtime when the step is cancelled).
    tool_calls: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.results, types.MappingProxyType):
            self.results = types.MappingProxyType(dict(self.results))

    def emit_progress(
        self,
        message: str | None = None,
        *,
        current: float | None = None,
        total: float | None = None,
        data: Any = None,
    ) -> None:
        """Send an ephemeral `progress` chunk (§3.3); never raises or blocks, as progress is best effort."""
        chunk: dict[str, Any] = {"type": "progress"}
        for key, value in (("message", message), ("current", current), ("total", total), ("data", data)):
            if value is not None:
                chunk[key] = value
        self._emit(chunk)

    def emit_log(self, stream: str, line: str) -> None:
        """Send an ephemeral `log` chunk for one line of `stdout` or `stderr`, cut to MAX_LOG_LINE_CHARS."""
        self._emit({"type": "log", "stream": stream, "line": _cut(line)})

    def emit_log_lines(self, stream: str, lines: str) -> None:
        """Send several complete lines (joined by newlines) of `stdout` or `stderr` as one `log` chunk.

        Why: a block of output can hold tens of thousands of lines, and a call per line is most of what reading
        it costs (issue #19, bug 1). The chunk has the shape the runtime sends anyway once it has coalesced lines
        (spec §3.3 `line`, with embedded newlines); each line is still cut to MAX_LOG_LINE_CHARS.
        """
        if len(lines) > MAX_LOG_LINE_CHARS:
            parts = lines.split("\n")
            if max(map(len, parts)) > MAX_LOG_LINE_CHARS:
                lines = "\n".join(map(_cut, parts))
        self._emit({"type": "log", "stream": stream, "line": lines})

    def _emit(self, chunk: dict[str, Any]) -> None:
        try:
            self._progress_sink(chunk)
        except Exception:  # a broken sink must not fail the agent that reports progress
            log.debug("dropping %s chunk: sink failed", chunk.get("type"), exc_info=True)
