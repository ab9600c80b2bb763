"""Keeps what a run's steps write (issue #16, item 1): the durable twin of the live chunk coalescer.

Live chunks (`atlas.runtime.chunks`) are best effort and vanish with the step; a user debugging a failed run needs
the same output afterwards. So the engine's chunk sink also hands every chunk to this recorder, which turns it into
lines `{ts, stepNumber, stream, text}` and stores them in batches in the session's step log
(`atlas.bus.steplogs`, where the choice of a separate stream is explained).

- **What is kept:** `log` chunks line by line under their stream (`stdout`, `stderr`, or whatever the agent names,
  e.g. `log` for python `print`/`logging`), `progress` messages (stream `progress`) and an `llm` step's tool calls
  (stream `tool`). `text-delta` is not: it is the model's answer, recorded as the step's output.
- **Bounded per step:** at most `MAX_STEP_LINES` lines or `MAX_STEP_BYTES` bytes of text; what is beyond is counted
  and, when the step ends, one marker line (stream `atlas`) says how many lines were not kept. Capture happens
  before the live coalescer drops anything, so the kept log is the step's first lines, complete.
- **Cheap per line:** `add` only appends to a list under a lock (it runs on whatever thread the agent emits from);
  one flusher task per run writes a batch every `FLUSH_INTERVAL_S`, or at once when `FLUSH_LINES` are waiting, so a
  chatty step costs a publish per batch, never per line.
- **Redacted:** every text goes through the Templater's `redact` before it is written (`secret()` values are `***`).
- **Complete before `step:complete`:** `close_step` writes what the step left and waits for the bus's ack, so once a
  run has ended its log is whole; anything the step emits afterwards (a worker thread still running) is dropped.
  A log that cannot be written is logged and dropped: output must never fail the run it describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from atlas.sessions.events import now_iso

__all__ = [
    "FLUSH_INTERVAL_S",
    "FLUSH_LINES",
    "MAX_STEP_BYTES",
    "MAX_STEP_LINES",
    "AppendLogs",
    "StepLogRecorder",
    "cut_marker",
]

log = logging.getLogger(__name__)

#: A step keeps at most this many lines...
MAX_STEP_LINES = 10_000
#: ...and this many bytes of text (UTF-8); past either, lines are counted, not kept.
MAX_STEP_BYTES = 1024 * 1024
#: How long lines may wait to be batched: a live follower sees them this late at most.
FLUSH_INTERVAL_S = 0.25
#: A batch holds at most this many lines; this many waiting are written without waiting for the interval.
FLUSH_LINES = 200
#: ...and about this many characters of text: even escaped six-fold in JSON, below the bus's 1 MiB message limit.
MAX_BATCH_BYTES = 128 * 1024
#: One progress message or line is cut to this many characters (as `emit_log` cuts its lines).
MAX_TEXT_CHARS = 8 * 1024

AppendLogs = Callable[[str, int, list[dict[str, Any]]], Awaitable[None]]
"""Store one batch: (session id, batch number, lines) — `StepLogStore.append`."""
Spawn = Callable[[Any], None]


def cut_marker(step: int, dropped: int) -> str:
    """The line that ends a step log cut at its bound."""
    return (f"[atlas: {dropped} more line{'' if dropped == 1 else 's'} of step {step} not kept: a step keeps "
            f"{MAX_STEP_LINES:,} lines or {MAX_STEP_BYTES // (1024 * 1024)} MiB]")


def _texts(chunk: dict[str, Any]) -> list[tuple[str, str]]:
    """The (stream, text) lines a chunk stands for; none for kinds that are not kept."""
    kind = chunk.get("type")
    if kind == "log":
        stream, line = chunk.get("stream"), chunk.get("line")
        if isinstance(stream, str) and isinstance(line, str):
            return [(stream, text) for text in line.split("\n")]
        return []
    if kind == "progress":
        message = chunk.get("message")
        if not isinstance(message, str):
            return []
        current, total = chunk.get("current"), chunk.get("total")
        if isinstance(current, int | float):
            message += f" ({current:g}/{total:g})" if isinstance(total, int | float) else f" ({current:g})"
        return [("progress", message[:MAX_TEXT_CHARS])]
    if kind == "tool-call":
        server = f" on {chunk['server']}" if chunk.get("server") else ""
        return [("tool", f"call {chunk.get('toolName')}{server}")]
    if kind == "tool-result":
        outcome = f"failed: {chunk['error']}" if chunk.get("error") else "ok"
        return [("tool", f"{chunk.get('toolName')} {outcome} ({chunk.get('durationMs')} ms)"[:MAX_TEXT_CHARS])]
    return []


@dataclass
class _Budget:
    lines: int = 0
    bytes: int = 0
    dropped: int = 0


class StepLogRecorder:
    """The step log of one run: `add` from any thread, a flusher task on the loop, `close_step` at a step's end."""

    def __init__(self, session_id: str, append: AppendLogs, redact: Callable[[Any], Any], spawn: Spawn) -> None:
        self._session_id = session_id
        self._append = append
        self._redact = redact
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._budgets: dict[int, _Budget] = {}
        self._closed_upto = 0
        self._scheduled = False  # a flusher runs or is about to (guarded by _lock)
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._batches = 0

    # ------------------------------------------------------------ producers (any thread)

    def add(self, step: int, chunk: dict[str, Any]) -> None:
        """Keep the lines of one chunk of `step` (within its bound); never blocks on the bus, never raises."""
        texts = _texts(chunk)
        if not texts:
            return
        ts = now_iso()
        with self._lock:
            if step <= self._closed_upto:
                return
            budget = self._budgets.setdefault(step, _Budget())
            for stream, text in texts:
                size = len(text.encode("utf-8", "replace")) + 1
                if budget.lines >= MAX_STEP_LINES or budget.bytes + size > MAX_STEP_BYTES:
                    budget.dropped += 1
                    continue
                budget.lines += 1
                budget.bytes += size
                self._pending.append({"ts": ts, "stepNumber": step, "stream": stream, "text": text})
            urgent = len(self._pending) >= FLUSH_LINES
            start = not self._scheduled
            self._scheduled = True
        if start or urgent:
            if threading.get_ident() == self._loop_thread:
                self._poke(start, urgent)
            else:
                with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over anyway
                    self._loop.call_soon_threadsafe(self._poke, start, urgent)

    # ------------------------------------------------------------ the flusher (loop thread)

    def _poke(self, start: bool, urgent: bool) -> None:
        if start:
            self._spawn(self._flush_loop())
        if urgent:
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            with self._lock:
                lines, self._pending = self._pending, []
                if not lines:
                    self._scheduled = False  # the next `add` starts a new flusher
                    return
            await self._send(lines)

    async def _send(self, lines: list[dict[str, Any]]) -> None:
        async with self._send_lock:  # one batch at a time, so the log keeps the order lines came in
            for batch in _batches(lines):
                self._batches += 1
                try:
                    await self._append(self._session_id, self._batches, self._redact(batch))
                except Exception:
                    log.warning("session %s: %d step log lines could not be stored", self._session_id, len(batch),
                                exc_info=True)

    # ------------------------------------------------------------ a step's end

    async def close_step(self, step: int) -> None:
        """Store what `step` left (and its cut marker) now, and drop whatever it emits later."""
        with self._lock:
            self._closed_upto = max(self._closed_upto, step)
            budget = self._budgets.pop(step, None)
            if budget is not None and budget.dropped:
                self._pending.append({"ts": now_iso(), "stepNumber": step, "stream": "atlas",
                                      "text": cut_marker(step, budget.dropped)})
            lines, self._pending = self._pending, []
        await self._send(lines)  # even with none: waits for a batch the flusher is still writing


def _batches(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`lines` split into batches of at most FLUSH_LINES lines and about MAX_BATCH_BYTES of text."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for line in lines:
        weight = len(line["text"]) + 64
        if current and (len(current) >= FLUSH_LINES or size + weight > MAX_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(line)
        size += weight
    if current:
        out.append(current)
    return out
