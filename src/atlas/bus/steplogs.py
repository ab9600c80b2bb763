"""The step-log port: where a session's durable step output lives on the bus (issue #16, item 1).

A run's step output (shell stdout/stderr, python `emit_log`/`print`, an `http` step's request lines, an `llm` step's
tool calls) is kept in its own stream, SESSION_LOGS, one subject per session (`logs.sessions.<sid>`), each message a
*batch* of lines (`{"lines": [{ts, stepNumber, stream, text}, ...]}`), written by the session's runner.

Why a stream of its own rather than `step:log` events in the session's log: the session log is folded by every
reader (the read model, recovery, rebuilds, every SSE stream, the browser's reducer, the CLI's follow), and its
appends are conditional, one writer at a time, in `seq` order. Output is bulky (up to a MiB per step) and none of
those readers needs it: putting it there would make every replay, rebuild and live view carry it, and a chatty
step would hold up `step:complete` behind its own lines. A second stream with the same `max_age` as
SESSION_EVENTS keeps the logs exactly as long as the session (retention is by age, never by purge), needs no
expected-sequence appends (only the runner writes it; `Nats-Msg-Id` dedupes a resend), and can be read by cursor
with direct gets on any replica.

A cursor names a position between lines: `<stream sequence>.<line index>` (the next line to read is line `index`
of the message at that sequence, or the first line of the next message). It is opaque to clients.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from atlas.bus.client import SESSION_LOGS, Bus, logs_subject
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads

__all__ = ["LogPage", "StepLogStore", "parse_cursor"]

_BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)
_CURSOR = re.compile(r"([0-9]{1,19})\.([0-9]{1,9})")


def parse_cursor(text: str | None) -> tuple[int, int]:
    """(stream sequence, line index) of a cursor; `None` or "" is the start. ValueError for anything else."""
    if not text:
        return 0, 0
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise ValueError(f"not a log cursor: {text!r}")
    return int(match.group(1)), int(match.group(2))


def _cursor(seq: int, index: int) -> str:
    return f"{seq}.{index}"


@dataclass(frozen=True)
class LogPage:
    """Lines in order, the cursor after the last of them, and whether the stored log has nothing after it now."""

    lines: list[dict[str, Any]]
    next_cursor: str
    at_end: bool


class StepLogStore:
    """Appends batches of step-log lines and reads them back by cursor; failures are `bus_unavailable`."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def append(self, session_id: str, batch: int, lines: list[dict[str, Any]]) -> None:
        """Store one batch (the run's `batch`-th, which dedupes a resend); raises the bus's own errors, like
        `SessionLog.append`, so the runner can tell a failing bus from a bug."""
        data = dumps({"lines": lines})
        await self._bus.publish(logs_subject(session_id), data, {"Nats-Msg-Id": f"{session_id}:log:{batch}"})

    async def read(self, session_id: str, cursor: str | None, limit: int) -> LogPage:
        """Up to `limit` lines after `cursor` (ValueError for a malformed one); one direct get per batch."""
        seq, index = parse_cursor(cursor)
        out: list[dict[str, Any]] = []
        subject = logs_subject(session_id)
        position = (seq, index)
        try:
            while len(out) < limit:
                try:
                    msg = await self._bus.js.get_msg(SESSION_LOGS, seq=max(seq, 1), subject=subject, next=True,
                                                     direct=True)
                except NotFoundError:
                    return LogPage(out, _cursor(*position), True)
                if msg.data is None or msg.seq is None:
                    return LogPage(out, _cursor(*position), True)
                msg_seq = int(msg.seq)
                lines = loads(msg.data).get("lines") or []
                start = index if msg_seq == seq else 0
                taken = lines[start : start + limit - len(out)]
                out.extend(taken)
                end = start + len(taken)
                if end < len(lines):  # the page is full inside this batch
                    return LogPage(out, _cursor(msg_seq, end), False)
                seq, index = msg_seq + 1, 0
                position = (seq, 0)
        except _BUS_ERRORS as exc:
            raise AtlasError("bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}") from exc
        return LogPage(out, _cursor(*position), False)

    async def follow(self, session_id: str, on_batch: Callable[[], None]) -> Subscription:
        """Call `on_batch` whenever a batch of the session is published, until the subscription is unsubscribed;
        registered at the server before it returns, so a reader that reads after this misses nothing.

        Only a wake-up: a plain subscription does not see stream sequences, so the follower re-reads the stream
        after its cursor (cheap: a batch holds up to 200 lines)."""
        nc = self._bus.nc
        if nc is None:
            raise AtlasError("bus_unavailable", "The message bus is unavailable")

        async def deliver(_msg: Any) -> None:
            on_batch()

        try:
            sub = await nc.subscribe(logs_subject(session_id), cb=deliver, pending_msgs_limit=64)
            await nc.flush(timeout=1)
        except _BUS_ERRORS as exc:
            raise AtlasError("bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}") from exc
        return sub
