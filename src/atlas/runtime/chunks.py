"""Coalesces a run's ephemeral chunks (spec §3.3) so that how much a step prints never decides what it costs.

Why (issue #19, bug 1): every output line used to become its own chunk, and every chunk copied the live view and
spawned its own publish task. A step printing 300,000 empty lines grew the daemon by 1.8 GiB and stalled it for
seconds; two million lines reset the bus connection. Verbose build and test logs look exactly like that.

How: the sink only appends to a bounded buffer (thread-safe, as sync python agents emit from a worker thread), and
one flusher task per run turns what is pending into at most one chunk per kind and stream, every
`FLUSH_INTERVAL_S` or as soon as `FLUSH_CHARS` are waiting. So the live view is copied and the bus is published to
once per flush, never once per line, and memory is bounded whatever a step prints:

- `log` lines of one stream are joined with newlines into one `log` chunk: the `line` field then holds several
  lines, a shape the published ChunkBody schema, the UI (which shows log chunks joined by newlines in a `<pre>`)
  and the CLI already accept. Over `MAX_PENDING_CHARS`, the oldest pending lines are dropped and the chunk starts
  with a `[atlas: N lines dropped]` line, since chunks MAY be dropped under load (§3.3) but a viewer should know.
- `text-delta` pieces are concatenated (the oldest text is cut when over the cap); `progress` keeps the latest.
- anything else is passed on as it came, at most `MAX_OTHER` per flush.

Every chunk fits `MAX_CHUNK_BYTES` once encoded (lines are dropped until it does). When a step ends, its pending
chunks are sent at once, before `step:complete`, and anything it emits afterwards (a worker thread still running)
is dropped: `step:complete` clears the block's live chunks, so later ones would only be stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from atlas.jsoncodec import dumps

__all__ = [
    "FLUSH_CHARS",
    "FLUSH_INTERVAL_S",
    "MAX_CHUNK_BYTES",
    "MAX_PENDING_CHARS",
    "ChunkCoalescer",
    "dropped_marker",
]

log = logging.getLogger(__name__)

#: How long chunks may wait to be coalesced: short enough for a live view, long enough to batch a flood.
FLUSH_INTERVAL_S = 0.05
#: A stream with this many characters pending is flushed without waiting for the interval.
FLUSH_CHARS = 16 * 1024
#: Characters kept pending per stream; older lines beyond this are dropped (and counted).
MAX_PENDING_CHARS = 32 * 1024
#: The most one chunk message may weigh on the bus (spec §3.3, §10.6).
MAX_CHUNK_BYTES = 64 * 1024
#: Room left in MAX_CHUNK_BYTES for the envelope around a chunk body (`sessionId`, `stepNumber`).
_ENVELOPE_BYTES = 256
#: Chunks of other types kept per flush.
MAX_OTHER = 50
#: The longest a step's end waits for its last chunks to go out: they are live-only, the step must not hang.
CLOSE_TIMEOUT_S = 2.0

Deliver = Callable[[int, dict[str, Any]], Awaitable[None]]
Spawn = Callable[[Any], None]


def dropped_marker(count: int) -> str:
    """The line that stands for `count` lines dropped from a `log` chunk."""
    return f"[atlas: {count} line{'' if count == 1 else 's'} dropped]"


class _Text:
    """Pending text of one `log` stream (lines) or of `text-delta` (pieces), capped at MAX_PENDING_CHARS.

    A `log` part may hold several lines (`AgentContext.emit_log_lines`), so parts carry their line counts: the
    dropped count stays a count of lines.
    """

    __slots__ = ("chars", "dropped", "parts", "separator")

    def __init__(self, separator: str) -> None:
        self.parts: deque[tuple[str, int]] = deque()
        self.chars = 0
        self.dropped = 0
        self.separator = separator

    def add(self, text: str) -> None:
        lines = text.count("\n") + 1 if self.separator else 1
        self.parts.append((text, lines))
        self.chars += len(text) + len(self.separator)
        while self.chars > MAX_PENDING_CHARS and len(self.parts) > 1:
            old, count = self.parts.popleft()
            self.chars -= len(old) + len(self.separator)
            self.dropped += count
        if self.chars > MAX_PENDING_CHARS:  # one part alone is over the cap: keep its end
            self._keep_end()

    def _keep_end(self) -> None:
        text, lines = self.parts[0]
        tail = text[-MAX_PENDING_CHARS:]
        if self.separator:
            start = tail.find("\n")
            if start >= 0:
                tail = tail[start + 1 :]  # whole lines only: the first one was cut
            kept = tail.count("\n") + 1
            self.dropped += lines - kept
            lines = kept
        self.parts[0] = (tail, lines)
        self.chars = len(tail) + len(self.separator)

    def text(self) -> str:
        return self.separator.join(text for text, _ in self.parts)


def _fits(body: dict[str, Any]) -> bool:
    return len(dumps(body)) <= MAX_CHUNK_BYTES - _ENVELOPE_BYTES


def _log_body(stream: str, pending: _Text) -> dict[str, Any]:
    """One `log` chunk for the pending lines of `stream`, dropping the oldest until it fits MAX_CHUNK_BYTES."""
    text, dropped = pending.text(), pending.dropped
    while True:
        line = f"{dropped_marker(dropped)}\n{text}" if dropped else text
        body = {"type": "log", "stream": stream, "line": line}
        if not text or _fits(body):
            return body
        cut = text.find("\n", len(text) // 2)
        if cut < 0:  # a single line too heavy on the wire (escapes): keep its end
            text = text[len(text) // 2 :]
        else:
            dropped += text.count("\n", 0, cut + 1)
            text = text[cut + 1 :]


def _delta_body(pending: _Text) -> dict[str, Any]:
    """One `text-delta` chunk for the pending pieces, cut from the front until it fits MAX_CHUNK_BYTES."""
    delta = pending.text()
    while True:
        body = {"type": "text-delta", "delta": delta}
        if not delta or _fits(body):
            return body
        delta = delta[len(delta) // 2 :]


class ChunkCoalescer:
    """The chunk buffer of one run: `add` from any thread, one flusher task on the loop, `close_step` at a step's end.

    `deliver(step, body)` applies a chunk to the live view and publishes it; it is awaited once per coalesced
    chunk, one at a time, so a slow bus slows the flusher down (and pending lines get dropped) rather than piling
    up tasks. `spawn` keeps the flusher task referenced (the daemon's `spawn`).
    """

    def __init__(self, deliver: Deliver, spawn: Spawn) -> None:
        self._deliver = deliver
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # (step, kind, stream) -> pending text, or the latest progress body, or a deque of other bodies
        self._pending: dict[tuple[int, str, str], Any] = {}
        self._closed_upto = 0  # steps run one after another: every step up to this one has ended
        self._scheduled = False  # a flusher runs or is about to (guarded by _lock)
        self._urgent = False  # FLUSH_CHARS are waiting: flush without waiting for the interval
        self._running = False  # a flusher task exists (loop thread only)

    # ------------------------------------------------------------ producers (any thread)

    def sink(self, step: int) -> Callable[[dict[str, Any]], None]:
        """The `AgentContext` sink of `step`."""
        return lambda chunk: self.add(step, chunk)

    def add(self, step: int, chunk: dict[str, Any]) -> None:
        """Queue one chunk of `step`; never blocks on the bus and never raises for a well-formed chunk."""
        with self._lock:
            if step <= self._closed_upto:
                return
            urgent = self._queue(step, chunk)
            wake = urgent and not self._urgent
            self._urgent = self._urgent or urgent
            start = not self._scheduled
            self._scheduled = True
        if start or wake:
            if threading.get_ident() == self._loop_thread:
                self._poke()
            else:
                with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over anyway
                    self._loop.call_soon_threadsafe(self._poke)

    def _queue(self, step: int, chunk: dict[str, Any]) -> bool:
        """Fold `chunk` into what is pending (under `_lock`); True when its stream should be flushed now."""
        kind = chunk.get("type")
        if kind == "log" and isinstance(chunk.get("line"), str) and isinstance(chunk.get("stream"), str):
            return self._add_text((step, "log", chunk["stream"]), "\n", chunk["line"])
        if kind == "text-delta" and isinstance(chunk.get("delta"), str):
            return self._add_text((step, "text-delta", ""), "", chunk["delta"])
        if kind == "progress":
            self._pending[(step, "progress", "")] = chunk
            return False
        others = self._pending.get((step, "other", ""))
        if others is None:
            others = self._pending[(step, "other", "")] = deque(maxlen=MAX_OTHER)
        others.append(chunk)
        return False

    def _add_text(self, key: tuple[int, str, str], separator: str, text: str) -> bool:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Text(separator)
        pending.add(text)
        return bool(pending.chars >= FLUSH_CHARS)

    # ------------------------------------------------------------ the flusher (loop thread)

    def _poke(self) -> None:
        if not self._running:
            self._running = True
            self._spawn(self._flush_loop())
        if self._urgent:
            self._wake.set()

    async def _flush_loop(self) -> None:
        try:
            while True:
                if not self._urgent:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FLUSH_INTERVAL_S):
                            await self._wake.wait()
                self._wake.clear()
                batch = self._take(None)
                if not batch:
                    return
                await self._send(batch)
        finally:
            self._running = False

    def _take(self, upto: int | None) -> list[tuple[int, dict[str, Any]]]:
        """Turn what is pending (for steps up to `upto`, or all) into chunk bodies, in the order it came."""
        with self._lock:
            keys = [key for key in self._pending if upto is None or key[0] <= upto]
            batch: list[tuple[int, dict[str, Any]]] = []
            for key in keys:
                step, kind, stream = key
                pending = self._pending.pop(key)
                if kind == "log":
                    batch.append((step, _log_body(stream, pending)))
                elif kind == "text-delta":
                    batch.append((step, _delta_body(pending)))
                elif kind == "progress":
                    batch.append((step, pending))
                else:
                    batch.extend((step, body) for body in pending)
            if upto is None or not self._pending:
                self._urgent = False
            if upto is None and not batch:
                self._scheduled = False  # the next `add` starts a new flusher
            return batch

    async def _send(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        async with self._send_lock:  # one flush at a time, so chunks go out in order
            for step, body in batch:
                try:
                    await self._deliver(step, body)
                except Exception:  # live-only and best effort (§3.3): a chunk that cannot go out is dropped
                    log.debug("dropping a %s chunk", body.get("type"), exc_info=True)

    # ------------------------------------------------------------ a step's end

    async def close_step(self, step: int) -> None:
        """Send what `step` left pending now, and drop whatever it emits later."""
        with self._lock:
            self._closed_upto = max(self._closed_upto, step)
        batch = self._take(step)
        if batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._send(batch)
