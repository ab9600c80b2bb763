"""Constructors for the durable session events of spec §3.2, plus the time helpers they rely on.

Why this module exists: every producer (accept pipeline, runner, cancel, recovery) must write exactly the same
wire shape, because every daemon's read model and the browser fold these events with the same reducer
(`atlas.sessions.reducer`). Building events in one place keeps the camelCase keys, the "optional fields are
omitted, never ``null``" rule, the timestamp format and the 256 KiB recording cap consistent.

Events are plain JSON dicts (like Temporal's history as plain data), not models: they go straight onto the bus
and into SQLite, and the TypedDicts below only document their shape.

Constructors validate the few closed vocabularies (statuses, triggers, action types) and raise ``ValueError``
on a programming error, so a bad event is caught at its source rather than in every consumer. Values passed in
are referenced, not copied: events are meant to be serialised right away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, NotRequired, TypedDict

from atlas.jsoncodec import dumps

__all__ = [
    "ACTION_TYPES",
    "PREVIEW_BYTES",
    "RECORD_LIMIT_BYTES",
    "STATUSES",
    "STEP_RESULT_STATUSES",
    "TERMINAL_STATUSES",
    "TRIGGERS",
    "complete",
    "duration_ms",
    "format_iso",
    "now_iso",
    "parse_iso",
    "planned_step",
    "queued",
    "start",
    "step_complete",
    "step_skipped",
    "step_start",
    "summary",
    "truncate_recorded",
]

# --- vocabularies (§3.1, §3.2) ----------------------------------------------------------------------------

#: Every session status. Defined here (the lowest module of the package) and re-exported by the reducer.
STATUSES: Final[frozenset[str]] = frozenset(
    {"queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted"}
)
#: A terminal status never changes again (§3.1).
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(
    {"completed", "failed", "skipped", "cancelled", "interrupted"}
)
#: `step:complete.status`.
STEP_RESULT_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed"})
#: `session:queued.trigger` (§4.1).
TRIGGERS: Final[frozenset[str]] = frozenset({"http", "webhook", "schedule", "cascade"})
#: `actionType` of a step (§2.4).
ACTION_TYPES: Final[frozenset[str]] = frozenset({"agent", "llm", "signal"})

#: A recorded input/output whose JSON text is larger than this is replaced by a preview (§3.2).
RECORD_LIMIT_BYTES: Final = 256 * 1024
#: Size of that preview.
PREVIEW_BYTES: Final = 4 * 1024


# --- documentation of the wire shapes -------------------------------------------------------------------


class PlannedStep(TypedDict):
    agentName: str
    stateId: str
    task: str
    actionType: Literal["agent", "llm", "signal"]
    outputKey: str


class KeyDetail(TypedDict):
    label: str
    value: Any
    url: NotRequired[str]


class Usage(TypedDict, total=False):
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheWriteTokens: int
    model: str


class _EventBase(TypedDict):
    type: str
    sessionId: str
    seq: int
    timestamp: str


class SessionQueuedEvent(_EventBase):
    workspaceId: str
    jobName: str
    signalId: str
    task: str
    trigger: Literal["http", "webhook", "schedule", "cascade"]
    correlationId: str
    parentSessionId: NotRequired[str]
    rootSessionId: str
    depth: int
    plannedSteps: list[PlannedStep]
    payload: Any


class SessionStartEvent(_EventBase):
    workspaceId: str
    jobName: str
    task: str
    signalId: str
    correlationId: str
    parentSessionId: NotRequired[str]
    rootSessionId: str
    depth: int
    plannedSteps: list[PlannedStep]


class StepStartEvent(_EventBase):
    stepNumber: int
    agentName: str
    stateId: str
    actionType: Literal["agent", "llm", "signal"]
    task: str
    outputKey: str
    input: NotRequired[Any]


class StepCompleteEvent(_EventBase):
    stepNumber: int
    status: Literal["completed", "failed"]
    durationMs: int
    toolCalls: list[Any]
    output: NotRequired[Any]
    error: NotRequired[str]
    errorCode: NotRequired[str]
    usage: NotRequired[Usage]
    childSessionId: NotRequired[str]


class StepSkippedEvent(_EventBase):
    stateId: str
    agentName: NotRequired[str]


class SessionSummaryEvent(_EventBase):
    summary: str
    keyDetails: list[KeyDetail]


class SessionCompleteEvent(_EventBase):
    status: Literal["completed", "failed", "skipped", "cancelled", "interrupted"]
    durationMs: int
    error: NotRequired[str]
    errorCode: NotRequired[str]


# --- time -------------------------------------------------------------------------------------------------


def format_iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and ``Z`` (the spec's only time format); a naive datetime is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_second_text: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current time as the spec writes it, e.g. ``2026-11-24T10:15:02.123Z``.

    Every event and envelope is stamped, so this is hot: the text up to the second is formatted once per second,
    and only the milliseconds per call (the same result as ``format_iso(datetime.now(UTC))``, a quarter of the
    cost)."""
    global _second_text
    second, nanos = divmod(time.time_ns(), 1_000_000_000)
    if second != _second_text[0]:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{nanos // 1_000_000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp into an aware UTC datetime.

    Lenient on input (any offset, ``Z`` or none, any fraction) because timestamps may come from other daemons
    or hand-written logs; raises ``ValueError`` when the text is not a timestamp at all.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp: {text!r}")
    stripped = text.strip()
    if stripped[-1:] in ("Z", "z"):
        stripped = stripped[:-1] + "+00:00"
    moment = datetime.fromisoformat(stripped)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def duration_ms(started_at: str, ended_at: str) -> int:
    """Whole milliseconds between two timestamps; never negative, as two daemons' clocks may skew."""
    delta = parse_iso(ended_at) - parse_iso(started_at)
    return max(0, round(delta.total_seconds() * 1000))


# --- recording cap ----------------------------------------------------------------------------------------


def truncate_recorded(value: Any) -> Any:
    """Return ``value``, or a small stand-in when its JSON text exceeds 256 KiB (§3.2).

    Why: events are replicated to every daemon and replayed to every viewer, so one huge step output must not
    bloat the stream. The preview is the first 4 KiB (UTF-8 bytes, cut on a character boundary) of the compact
    JSON text. ``value`` must be JSON-serialisable; the runtime rejects other outputs (``invalid_output``)
    before recording them.
    """
    encoded = dumps(value)
    if len(encoded) <= RECORD_LIMIT_BYTES:
        return value
    preview = encoded[:PREVIEW_BYTES].decode("utf-8", errors="ignore")
    return {"truncated": True, "preview": preview}


# --- constructors -----------------------------------------------------------------------------------------


def _base(event_type: str, session_id: str, seq: int, timestamp: str | None) -> dict[str, Any]:
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("sessionId must be a non-empty string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"seq must be an integer >= 1, got {seq!r}")
    return {
        "type": event_type,
        "sessionId": session_id,
        "seq": seq,
        "timestamp": timestamp if timestamp is not None else now_iso(),
    }


def _put(event: dict[str, Any], key: str, value: Any) -> None:
    """Set an optional field: the wire omits absent optionals instead of sending ``null``."""
    if value is not None:
        event[key] = value


def _check(name: str, value: Any, allowed: frozenset[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def _check_duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"durationMs must be a finite number >= 0, got {value!r}")
    return round(value)


def _lineage(
    event: dict[str, Any],
    *,
    correlation_id: str,
    parent_session_id: str | None,
    root_session_id: str,
    depth: int,
) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    event["correlationId"] = correlation_id
    if parent_session_id:  # never null, never "" (§3.4)
        event["parentSessionId"] = parent_session_id
    event["rootSessionId"] = root_session_id
    event["depth"] = depth


def _planned(steps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in step.items() if value is not None} for step in steps]


def planned_step(
    *, agentName: str, stateId: str, task: str, actionType: str, outputKey: str
) -> dict[str, Any]:
    """One entry of ``plannedSteps`` (§2.4 "Planned steps")."""
    _check("actionType", actionType, ACTION_TYPES)
    return {
        "agentName": agentName,
        "stateId": stateId,
        "task": task,
        "actionType": actionType,
        "outputKey": outputKey,
    }


def queued(
    *,
    sessionId: str,
    workspaceId: str,
    jobName: str,
    signalId: str,
    task: str,
    trigger: str,
    correlationId: str,
    rootSessionId: str,
    depth: int,
    plannedSteps: Iterable[Mapping[str, Any]],
    payload: Any,
    parentSessionId: str | None = None,
    seq: int = 1,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``session:queued``: written at acceptance, always seq 1, so a session is visible before it runs."""
    _check("trigger", trigger, TRIGGERS)
    event = _base("session:queued", sessionId, seq, timestamp)
    event.update(workspaceId=workspaceId, jobName=jobName, signalId=signalId, task=task, trigger=trigger)
    _lineage(
        event,
        correlation_id=correlationId,
        parent_session_id=parentSessionId,
        root_session_id=rootSessionId,
        depth=depth,
    )
    event["plannedSteps"] = _planned(plannedSteps)
    event["payload"] = payload
    return event


def start(
    *,
    sessionId: str,
    workspaceId: str,
    jobName: str,
    task: str,
    signalId: str,
    correlationId: str,
    rootSessionId: str,
    depth: int,
    plannedSteps: Iterable[Mapping[str, Any]],
    parentSessionId: str | None = None,
    seq: int = 2,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``session:start``: the runner took the session (always seq 2; written conditionally, §6.3)."""
    event = _base("session:start", sessionId, seq, timestamp)
    event.update(workspaceId=workspaceId, jobName=jobName, task=task, signalId=signalId)
    _lineage(
        event,
        correlation_id=correlationId,
        parent_session_id=parentSessionId,
        root_session_id=rootSessionId,
        depth=depth,
    )
    event["plannedSteps"] = _planned(plannedSteps)
    return event


def step_start(
    *,
    sessionId: str,
    seq: int,
    stepNumber: int,
    agentName: str,
    stateId: str,
    actionType: str,
    task: str,
    outputKey: str,
    input: Any = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``step:start``: a step action begins; ``input`` is recorded subject to the 256 KiB cap."""
    _check("actionType", actionType, ACTION_TYPES)
    if isinstance(stepNumber, bool) or not isinstance(stepNumber, int) or stepNumber < 1:
        raise ValueError(f"stepNumber must be an integer >= 1, got {stepNumber!r}")
    event = _base("step:start", sessionId, seq, timestamp)
    event.update(
        stepNumber=stepNumber,
        agentName=agentName,
        stateId=stateId,
        actionType=actionType,
        task=task,
        outputKey=outputKey,
    )
    if input is not None:
        event["input"] = truncate_recorded(input)
    return event


def step_complete(
    *,
    sessionId: str,
    seq: int,
    stepNumber: int,
    status: str,
    durationMs: float,
    output: Any = None,
    error: str | None = None,
    errorCode: str | None = None,
    usage: Mapping[str, Any] | None = None,
    childSessionId: str | None = None,
    toolCalls: list[Any] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``step:complete``: a step ended ``completed`` or ``failed``; ``output`` is subject to the 256 KiB cap.

    ``toolCalls`` is always present (``[]`` by default) because the reference's shape has it; ``usage`` keeps
    only the keys that have a value and is omitted when none does.
    """
    _check("status", status, STEP_RESULT_STATUSES)
    if isinstance(stepNumber, bool) or not isinstance(stepNumber, int) or stepNumber < 1:
        raise ValueError(f"stepNumber must be an integer >= 1, got {stepNumber!r}")
    event = _base("step:complete", sessionId, seq, timestamp)
    event.update(
        stepNumber=stepNumber,
        status=status,
        durationMs=_check_duration(durationMs),
        toolCalls=list(toolCalls) if toolCalls is not None else [],
    )
    if output is not None:
        event["output"] = truncate_recorded(output)
    _put(event, "error", error)
    _put(event, "errorCode", errorCode)
    if usage is not None:
        kept = {key: value for key, value in usage.items() if value is not None}
        if kept:
            event["usage"] = kept
    _put(event, "childSessionId", childSessionId)
    return event


def step_skipped(
    *,
    sessionId: str,
    seq: int,
    stateId: str,
    agentName: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``step:skipped``: a step action whose ``if`` rendered falsy; it turns the planned block ``skipped``."""
    event = _base("step:skipped", sessionId, seq, timestamp)
    event["stateId"] = stateId
    _put(event, "agentName", agentName)
    return event


def summary(
    *,
    sessionId: str,
    seq: int,
    summary: str,
    keyDetails: Iterable[Mapping[str, Any]] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``session:summary``: the job's rendered ``summary``; key details drop an absent ``url``."""
    event = _base("session:summary", sessionId, seq, timestamp)
    event["summary"] = summary
    event["keyDetails"] = [
        {key: value for key, value in detail.items() if not (key == "url" and value is None)}
        for detail in (keyDetails or [])
    ]
    return event


def complete(
    *,
    sessionId: str,
    seq: int,
    status: str,
    durationMs: float,
    error: str | None = None,
    errorCode: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """``session:complete``: the one terminal record, always last (§3.2, §4.4)."""
    _check("status", status, TERMINAL_STATUSES)
    event = _base("session:complete", sessionId, seq, timestamp)
    event["status"] = status
    event["durationMs"] = _check_duration(durationMs)
    _put(event, "error", error)
    _put(event, "errorCode", errorCode)
    return event
