"""The durable session events of spec §3.2: their types, and the only functions that build them.

Why this module exists: every producer (accept pipeline, consumer, runner, cancel, recovery) must write exactly the
same wire shape, because every daemon's read model and the browser fold these events with the same reducer
(`atlas.sessions.reducer`), and `/openapi.json` publishes their JSON Schemas. So each event type is declared once,
here, as a TypedDict, and built only by its constructor below; the API generates the published schemas from the
same TypedDicts (`atlas.api.wire_schemas`), so the document cannot drift from what the runtime writes. Building
events in one place keeps the camelCase keys, the "optional fields are omitted, never ``null``" rule, the key
order (the bytes on the bus), the timestamp format and the 256 KiB recording cap consistent.

Events are plain JSON dicts (like Temporal's history as plain data), not models: they go straight onto the bus and
into SQLite, on the hot path of every trigger, so nothing validates them at run time beyond the cheap checks of
the constructors. The TypedDicts cost nothing at run time; the ``Annotated`` metadata (`JsonSchema`) and the field
docstrings are only read when the API generates its schemas.

Constructors validate the few closed vocabularies (statuses, triggers, action types) and raise ``ValueError`` on
a programming error, so a bad event is caught at its source rather than in every consumer. Values passed in are
referenced, not copied: events are meant to be serialised right away. The caller names the event's session and
``seq`` (a `SessionWriter` numbers its log and checks both); ``timestamp`` defaults to now.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NotRequired, TypeVar, cast, get_args

# typing_extensions' TypedDict: pydantic (which generates the published schemas) needs it before Python 3.12.
from typing_extensions import TypeAliasType, TypedDict

from atlas.jsoncodec import dumps

__all__ = [
    "ACTION_TYPES",
    "EVENT_TYPES",
    "PREVIEW_BYTES",
    "RECORD_LIMIT_BYTES",
    "STATUSES",
    "STEP_RESULT_STATUSES",
    "TERMINAL_STATUSES",
    "TRIGGERS",
    "WAIT_REASONS",
    "ActionType",
    "ChatLink",
    "ChunkBody",
    "Count",
    "DurableEvent",
    "EphemeralChunk",
    "ErrorCause",
    "ErrorDetails",
    "JsonSchema",
    "JsonValue",
    "KeyDetail",
    "LogChunk",
    "ParentId",
    "PlannedStep",
    "ProgressChunk",
    "Seq",
    "SessionCompleteEvent",
    "SessionQueuedEvent",
    "SessionStartEvent",
    "SessionStatus",
    "SessionSummaryEvent",
    "SessionWaitingEvent",
    "StepCompleteEvent",
    "StepNumber",
    "StepResultStatus",
    "StepSkippedEvent",
    "StepStartEvent",
    "TerminalStatus",
    "TextDeltaChunk",
    "Timestamp",
    "Trigger",
    "Usage",
    "WaitReason",
    "WaitingFor",
    "complete",
    "documented",
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
    "waiting",
]

# --- vocabularies (§3.1, §3.2) ----------------------------------------------------------------------------
# Each closed vocabulary is a Literal (what the types and the published schemas use) and a frozenset of the same
# values (what the constructors and the reducer check against at run time).

SessionStatus = Literal["queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted"]
#: A terminal status never changes again (§3.1).
TerminalStatus = Literal["completed", "failed", "skipped", "cancelled", "interrupted"]
#: `step:complete.status`.
StepResultStatus = Literal["completed", "failed"]
#: `session:queued.trigger` (§4.1), where the run came from: a plain HTTP call, a webhook, a cron tick, a parent's
#: `signal` action, the web UI or the CLI (from their `X-Atlas-Client` header), the reference's chat (reserved: no
#: producer yet) or a re-run of an earlier session (issue #16).
Trigger = Literal["http", "webhook", "schedule", "cascade", "ui", "cli", "chat", "rerun"]
#: `actionType` of a step (§2.4).
ActionType = Literal["agent", "llm", "signal"]
#: Why a queued session has not started (issue #16): `pending`, accepted but not yet taken by a runner (every slot
#: busy, or simply not fetched yet: no daemon can tell which); `concurrency`, parked behind its `queue` key's holders.
WaitReason = Literal["pending", "concurrency"]

#: Every session status. Defined here (the lowest module of the package) and re-exported by the reducer.
STATUSES: Final[frozenset[str]] = frozenset(get_args(SessionStatus))
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(get_args(TerminalStatus))
STEP_RESULT_STATUSES: Final[frozenset[str]] = frozenset(get_args(StepResultStatus))
TRIGGERS: Final[frozenset[str]] = frozenset(get_args(Trigger))
ACTION_TYPES: Final[frozenset[str]] = frozenset(get_args(ActionType))
WAIT_REASONS: Final[frozenset[str]] = frozenset(get_args(WaitReason))

#: A recorded input/output whose JSON text is larger than this is replaced by a preview (§3.2).
RECORD_LIMIT_BYTES: Final = 256 * 1024
#: Size of that preview.
PREVIEW_BYTES: Final = 4 * 1024


# --- schema metadata ----------------------------------------------------------------------------------------


class JsonSchema:
    """Extra JSON Schema keywords for a field (a bound, a format, a description) that its Python type cannot say.

    Used as ``Annotated`` metadata; pydantic calls `__get_pydantic_json_schema__` when the API generates its
    schemas, and nothing else ever reads it, so this module needs no pydantic and events cost nothing extra.
    """

    __slots__ = ("keywords",)

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Callable[[Any], Any]) -> dict[str, Any]:
        schema = dict(handler(core_schema))
        schema.update(self.keywords)
        return schema


_T = TypeVar("_T")


def documented(cls: _T) -> _T:
    """Let a TypedDict's generated schema describe each field with the docstring written under it (pydantic's
    ``use_attribute_docstrings``, set as plain data: what pydantic's ``with_config`` does, without importing it)."""
    setattr(cls, "__pydantic_config__", {"use_attribute_docstrings": True})  # noqa: B010
    return cls


#: `seq`: 1 for `session:queued`, then +1 per event, without gaps (§3.2).
Seq = Annotated[int, JsonSchema(minimum=1)]
#: A count, a depth or a duration: never negative.
Count = Annotated[int, JsonSchema(minimum=0)]
#: The spec's only time format.
Timestamp = Annotated[
    str,
    JsonSchema(format="date-time", description="RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T10:15:02.123Z`"),
]
#: `parentSessionId` exists only for children and is never empty (§3.4).
ParentId = Annotated[str, JsonSchema(minLength=1, description="Only for children; never null or empty")]
#: A step's number in its session, from 1.
StepNumber = Annotated[int, JsonSchema(minimum=1)]
#: Any JSON value (a payload, a step's input or output).
JsonValue = Annotated[Any, JsonSchema(description="Any JSON value")]


# --- the wire shapes --------------------------------------------------------------------------------------


@documented
class PlannedStep(TypedDict):
    """One entry of `plannedSteps`: a step the job is expected to take (spec §2.4 "Planned steps")."""

    agentName: str
    stateId: str
    task: str
    actionType: ActionType
    outputKey: str
    """Where the step's result is stored (its `results` key)."""


@documented
class KeyDetail(TypedDict):
    """One rendered key detail of a job's `summary`."""

    label: str
    value: JsonValue
    url: NotRequired[str]


@documented
class ToolCallSummary(TypedDict):
    """One tool call of an `llm` step: the reference's ToolCallSummary plus atlas's `toolCallId`, `error` and
    `server` (issue #14). `args` is the decoded JSON object the model sent; `result` what the tool returned (its
    structured content when present, else its text), cut at 16 KiB with a `… [cut: N more characters]` marker."""

    toolCallId: NotRequired[str]
    toolName: str
    args: JsonValue
    result: NotRequired[JsonValue]
    durationMs: Count
    error: NotRequired[str]
    """Set when the call failed (a tool error, a dead server, a timeout, bad arguments)."""
    server: NotRequired[str]
    """The MCP server that ran it."""


class Usage(TypedDict, total=False):
    """Token usage an `llm` step's endpoint reported (§3.2); only the keys it reported."""

    inputTokens: Count
    outputTokens: Count
    cacheReadTokens: Count
    cacheWriteTokens: Count
    model: str


@documented
class ErrorDetails(TypedDict):
    """Why a step failed, beyond its one-line `error` (issue #16): what a user needs to find the faulty line or the
    failing command's complaint. Secrets are redacted and every text is bounded (cut with a `… [cut: …]` marker)."""

    type: str
    """The exception's class (`ValueError`, `steps.LoadError`), or `ShellError` for a shell step."""
    message: str
    traceback: NotRequired[str]
    """A python step's formatted traceback (`File "…/steps.py", line 12, in load_rows`), the daemon's frames
    trimmed."""
    stderrTail: NotRequired[str]
    """A shell step's last stderr lines (at most 20 lines, 4 KiB)."""
    exitCode: NotRequired[int]
    """A shell step's exit status, when it exited."""


@documented
class ErrorCause(TypedDict):
    """The failed child session behind a `signal` step's error, taken from the child's view: its error, its failing
    step's `errorDetails` and, for a grandchild, its own `cause` (nested at most 8 levels)."""

    sessionId: str
    workspaceId: NotRequired[str]
    jobName: str
    status: NotRequired[str]
    """The child's terminal status (`failed`, `cancelled`, `interrupted`…)."""
    error: NotRequired[str]
    errorCode: NotRequired[str]
    stepNumber: NotRequired[StepNumber]
    """The child's failed step."""
    agentName: NotRequired[str]
    errorDetails: NotRequired[ErrorDetails]
    """The failed step's details (a traceback, a stderr tail)."""
    cause: NotRequired[ErrorCause]
    """The child's own cause, when it failed because of a grandchild."""


@documented
class ChatLink(TypedDict):
    """The chat turn that started a session (`trigger: chat`, issue #17): the run page links back to it."""

    chatId: str
    turnId: str


@documented
class WaitingFor(TypedDict):
    """What a queued session waits for (issue #16); gone once it starts or ends."""

    reason: WaitReason
    sessionIds: NotRequired[list[str]]
    """For `concurrency`: the sessions that must end before this one starts, as they were when it was parked (the
    key's holders, then the sessions parked ahead of it)."""


@documented
class _EventHead(TypedDict):
    sessionId: str
    seq: Seq
    """1 for `session:queued`, then one more per event of the session, without gaps."""
    timestamp: Timestamp


@documented
class SessionQueuedEvent(_EventHead):
    """The `session:queued` event: written at acceptance, always seq 1, so a session is visible before it runs."""

    type: Literal["session:queued"]
    workspaceId: str
    jobName: str
    signalId: str
    task: str
    trigger: Trigger
    correlationId: str
    """Shared by the whole trigger tree."""
    parentSessionId: NotRequired[ParentId]
    rootSessionId: str
    depth: Count
    plannedSteps: list[PlannedStep]
    payload: JsonValue
    """The trigger's payload (`null` for a non-JSON webhook body, §5.2)."""
    skipStates: NotRequired[list[str]]
    """The envelope's `skipStates` (issue #14), kept so that an envelope rebuilt from this event still has them."""
    rerunOf: NotRequired[str]
    """For `trigger: rerun`: the session this one re-runs (issue #16)."""
    chat: NotRequired[ChatLink]
    """For `trigger: chat`: the chat turn whose job tool started it (issue #17)."""
    traceparent: NotRequired[str]
    """The W3C trace context the session's span continues (issue #18), when the accepting daemon traces."""


@documented
class SessionStartEvent(_EventHead):
    """The `session:start` event: a daemon took the session to run it (seq 2, or 3 after a `session:waiting`)."""

    type: Literal["session:start"]
    workspaceId: str
    jobName: str
    task: str
    signalId: str
    correlationId: str
    """Shared by the whole trigger tree."""
    parentSessionId: NotRequired[ParentId]
    rootSessionId: str
    depth: Count
    plannedSteps: list[PlannedStep]
    runner: str
    """The daemon id of the runner. Running sessions have no inflight marker, so this is how recovery tells
    whether the session's runner is still alive (spec §8.1 as amended in docs/decisions.md)."""


@documented
class SessionWaitingEvent(_EventHead):
    """The `session:waiting` event: a queued session was parked and says what for (issue #16). Written before
    `session:start` (which then has seq 3), only by the consumer that parked it."""

    type: Literal["session:waiting"]
    waitingFor: WaitingFor


@documented
class StepStartEvent(_EventHead):
    """The `step:start` event: a step action begins."""

    type: Literal["step:start"]
    stepNumber: StepNumber
    agentName: str
    stateId: str
    actionType: ActionType
    task: str
    """The rendered prompt of an `llm`/agent step (secrets redacted), else the planned task."""
    outputKey: str
    input: NotRequired[JsonValue]
    """The step's input, or a `{truncated, preview}` stand-in over 256 KiB; absent when `null`."""


@documented
class StepCompleteEvent(_EventHead):
    """The `step:complete` event: a step ended `completed` or `failed`."""

    type: Literal["step:complete"]
    stepNumber: StepNumber
    status: StepResultStatus
    durationMs: Count
    toolCalls: list[ToolCallSummary]
    """The tool calls of an `llm` step, in the order the model made them (also for a failed step)."""
    output: NotRequired[JsonValue]
    """The step's output, or a `{truncated, preview}` stand-in over 256 KiB; absent when `null`."""
    error: NotRequired[str]
    errorCode: NotRequired[str]
    childSessionId: NotRequired[str]
    """For `signal` actions: the child session."""
    usage: NotRequired[Usage]
    reasoning: NotRequired[str]
    """The model's reasoning text, when the provider returned it."""
    errorDetails: NotRequired[ErrorDetails]
    """A failed step's traceback (python) or stderr tail (shell), issue #16."""
    cause: NotRequired[ErrorCause]
    """A failed `signal` step's failed child session, with its own error and cause (issue #16)."""


@documented
class StepSkippedEvent(_EventHead):
    """The `step:skipped` event: a step action whose `if` rendered falsy."""

    type: Literal["step:skipped"]
    stateId: str
    agentName: NotRequired[str]


@documented
class SessionSummaryEvent(_EventHead):
    """The `session:summary` event: the job's rendered `summary` (the one event allowed after the end)."""

    type: Literal["session:summary"]
    summary: str
    keyDetails: list[KeyDetail]


@documented
class SessionCompleteEvent(_EventHead):
    """The `session:complete` event: the one terminal record, always last (§3.2, §4.4)."""

    type: Literal["session:complete"]
    status: TerminalStatus
    durationMs: Count
    """Milliseconds the session ran (0 for one that never started)."""
    error: NotRequired[str]
    errorCode: NotRequired[str]
    cause: NotRequired[ErrorCause]
    """The failed child session that made this one fail (its failing `signal` step's `cause`), issue #16."""
    duplicateOf: NotRequired[str]
    """For `skipped-duplicate`: the running session of the same `skip` key that made this one skip (issue #16)."""


#: Any durable event, as a `SessionWriter` appends it.
DurableEvent = (
    SessionQueuedEvent
    | SessionWaitingEvent
    | SessionStartEvent
    | StepStartEvent
    | StepCompleteEvent
    | StepSkippedEvent
    | SessionSummaryEvent
    | SessionCompleteEvent
)

#: Every durable event type, by its `type`, in the order a session writes them.
EVENT_TYPES: Final[dict[str, type[Any]]] = {
    "session:queued": SessionQueuedEvent,
    "session:waiting": SessionWaitingEvent,
    "session:start": SessionStartEvent,
    "step:start": StepStartEvent,
    "step:complete": StepCompleteEvent,
    "step:skipped": StepSkippedEvent,
    "session:summary": SessionSummaryEvent,
    "session:complete": SessionCompleteEvent,
}


# --- live-only chunks (§3.3): never stored, but kept on a running block's `ephemeral` list ----------------------


@documented
class ProgressChunk(TypedDict):
    type: Literal["progress"]
    message: NotRequired[str]
    current: NotRequired[float]
    total: NotRequired[float]
    data: NotRequired[JsonValue]


@documented
class LogChunk(TypedDict):
    type: Literal["log"]
    stream: Literal["stdout", "stderr"]
    line: str


@documented
class TextDeltaChunk(TypedDict):
    type: Literal["text-delta"]
    delta: str


ChunkBody = TypeAliasType(
    "ChunkBody",
    Annotated[
        ProgressChunk | LogChunk | TextDeltaChunk,
        JsonSchema(description="An ephemeral chunk (spec §3.3): `progress`, `log` or `text-delta`"),
    ],
)


@documented
class ToolCallChunk(TypedDict):
    """An `llm` step started a tool call (issue #14); its `tool-result` follows with the same `toolCallId`."""

    type: Literal["tool-call"]
    toolCallId: str
    toolName: str
    args: JsonValue
    server: NotRequired[str]


@documented
class ToolResultChunk(TypedDict):
    """A tool call ended; `result` is cut at 8 KiB, `error` is set when it failed."""

    type: Literal["tool-result"]
    toolCallId: str
    toolName: str
    durationMs: Count
    result: NotRequired[JsonValue]
    error: NotRequired[str]
    server: NotRequired[str]


StreamChunkBody = TypeAliasType(
    "StreamChunkBody",
    Annotated[
        ProgressChunk | LogChunk | TextDeltaChunk | ToolCallChunk | ToolResultChunk,
        JsonSchema(description="A chunk on the live stream: the kept kinds (`progress`, `log`, `text-delta`) and "
                               "the tool calls of `llm` steps (`tool-call`, `tool-result`), which views do not keep"),
    ],
)


@documented
class EphemeralChunk(TypedDict):
    """Live-only progress of a running step, never stored or replayed; may be dropped."""

    sessionId: str
    stepNumber: NotRequired[StepNumber]
    chunk: StreamChunkBody


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


#: `step:complete.reasoning` is kept up to this many characters.
MAX_REASONING_CHARS: Final = 64 * 1024


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
# Each builds its dict in the wire's key order (the head, then the fields in the order of its TypedDict), which is
# also the order the bytes on the bus have always had.


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


def _check_step(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"stepNumber must be an integer >= 1, got {value!r}")


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


def planned_step(*, agentName: str, stateId: str, task: str, actionType: str, outputKey: str) -> PlannedStep:
    """One entry of ``plannedSteps`` (§2.4 "Planned steps"); keyword-only, so the five API names are spelled once."""
    _check("actionType", actionType, ACTION_TYPES)
    return {
        "agentName": agentName,
        "stateId": stateId,
        "task": task,
        "actionType": cast(ActionType, actionType),
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
    plannedSteps: list[PlannedStep],
    payload: Any,
    parentSessionId: str | None = None,
    skipStates: list[str] | None = None,
    rerunOf: str | None = None,
    chat: ChatLink | dict[str, str] | None = None,
    traceparent: str | None = None,
    seq: int = 1,
    timestamp: str | None = None,
) -> SessionQueuedEvent:
    """``session:queued``: written at acceptance, always seq 1, so a session is visible before it runs.

    ``plannedSteps`` is the workspace's plan for the job, referenced, not copied (this is on every trigger's path);
    ``payload`` is always present, ``null`` included (a non-JSON webhook body, spec §5.2)."""
    _check("trigger", trigger, TRIGGERS)
    event = _base("session:queued", sessionId, seq, timestamp)
    event["workspaceId"] = workspaceId
    event["jobName"] = jobName
    event["signalId"] = signalId
    event["task"] = task
    event["trigger"] = trigger
    _lineage(
        event,
        correlation_id=correlationId,
        parent_session_id=parentSessionId,
        root_session_id=rootSessionId,
        depth=depth,
    )
    event["plannedSteps"] = plannedSteps
    event["payload"] = payload
    if skipStates:
        event["skipStates"] = skipStates
    if rerunOf:
        event["rerunOf"] = rerunOf
    if chat:
        event["chat"] = {"chatId": str(chat["chatId"]), "turnId": str(chat["turnId"])}
    if traceparent:
        event["traceparent"] = traceparent
    return cast(SessionQueuedEvent, event)


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
    plannedSteps: list[PlannedStep],
    runner: str,
    parentSessionId: str | None = None,
    seq: int = 2,
    timestamp: str | None = None,
) -> SessionStartEvent:
    """``session:start``: the runner took the session (seq 2, or 3 after a `session:waiting`; written
    conditionally, §6.3).

    ``runner`` names the daemon that runs it: recovery needs it to find a dead runner's sessions."""
    if not isinstance(runner, str) or not runner:
        raise ValueError("runner must be a non-empty string")
    event = _base("session:start", sessionId, seq, timestamp)
    event["workspaceId"] = workspaceId
    event["jobName"] = jobName
    event["task"] = task
    event["signalId"] = signalId
    _lineage(
        event,
        correlation_id=correlationId,
        parent_session_id=parentSessionId,
        root_session_id=rootSessionId,
        depth=depth,
    )
    event["plannedSteps"] = plannedSteps
    event["runner"] = runner
    return cast(SessionStartEvent, event)


def waiting(
    *,
    sessionId: str,
    seq: int,
    reason: str,
    sessionIds: Iterable[str] | None = None,
    timestamp: str | None = None,
) -> SessionWaitingEvent:
    """``session:waiting``: the session was parked (issue #16); ``sessionIds`` (copied into a list) names what it
    waits for and is omitted when empty."""
    _check("reason", reason, WAIT_REASONS)
    event = _base("session:waiting", sessionId, seq, timestamp)
    waiting_for: dict[str, Any] = {"reason": reason}
    ids = [sid for sid in sessionIds or () if isinstance(sid, str) and sid]
    if ids:
        waiting_for["sessionIds"] = ids
    event["waitingFor"] = waiting_for
    return cast(SessionWaitingEvent, event)


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
) -> StepStartEvent:
    """``step:start``: a step action begins; ``input`` is recorded subject to the 256 KiB cap."""
    _check("actionType", actionType, ACTION_TYPES)
    _check_step(stepNumber)
    event = _base("step:start", sessionId, seq, timestamp)
    event["stepNumber"] = stepNumber
    event["agentName"] = agentName
    event["stateId"] = stateId
    event["actionType"] = actionType
    event["task"] = task
    event["outputKey"] = outputKey
    if input is not None:
        event["input"] = truncate_recorded(input)
    return cast(StepStartEvent, event)


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
    childSessionId: str | None = None,
    usage: Mapping[str, Any] | None = None,
    toolCalls: list[Any] | None = None,
    reasoning: str | None = None,
    errorDetails: Mapping[str, Any] | None = None,
    cause: Mapping[str, Any] | None = None,
    timestamp: str | None = None,
) -> StepCompleteEvent:
    """``step:complete``: a step ended ``completed`` or ``failed``; ``output`` is subject to the 256 KiB cap.

    ``toolCalls`` is always present (``[]`` by default) because the reference's shape has it; ``usage`` keeps
    only the keys that have a value and is omitted when none does.
    """
    _check("status", status, STEP_RESULT_STATUSES)
    _check_step(stepNumber)
    event = _base("step:complete", sessionId, seq, timestamp)
    event["stepNumber"] = stepNumber
    event["status"] = status
    event["durationMs"] = _check_duration(durationMs)
    event["toolCalls"] = toolCalls if toolCalls is not None else []
    if output is not None:
        event["output"] = truncate_recorded(output)
    _put(event, "error", error)
    _put(event, "errorCode", errorCode)
    _put(event, "childSessionId", childSessionId)
    if usage is not None:
        kept = {key: value for key, value in usage.items() if value is not None}
        if kept:
            event["usage"] = kept
    if reasoning:
        cut = len(reasoning) - MAX_REASONING_CHARS
        event["reasoning"] = reasoning if cut <= 0 else f"{reasoning[:MAX_REASONING_CHARS]}… [cut: {cut} more]"
    _put(event, "errorDetails", dict(errorDetails) if errorDetails else None)
    _put(event, "cause", dict(cause) if cause else None)
    return cast(StepCompleteEvent, event)


def step_skipped(
    *,
    sessionId: str,
    seq: int,
    stateId: str,
    agentName: str | None = None,
    timestamp: str | None = None,
) -> StepSkippedEvent:
    """``step:skipped``: a step action whose ``if`` rendered falsy; it turns the planned block ``skipped``."""
    event = _base("step:skipped", sessionId, seq, timestamp)
    event["stateId"] = stateId
    _put(event, "agentName", agentName)
    return cast(StepSkippedEvent, event)


def summary(
    *,
    sessionId: str,
    seq: int,
    summary: str,
    keyDetails: Iterable[Mapping[str, Any]] | None = None,
    timestamp: str | None = None,
) -> SessionSummaryEvent:
    """``session:summary``: the job's rendered ``summary``; key details drop an absent ``url``."""
    event = _base("session:summary", sessionId, seq, timestamp)
    event["summary"] = summary
    event["keyDetails"] = [
        {key: value for key, value in detail.items() if not (key == "url" and value is None)}
        for detail in (keyDetails or [])
    ]
    return cast(SessionSummaryEvent, event)


def complete(
    *,
    sessionId: str,
    seq: int,
    status: str,
    durationMs: float,
    error: str | None = None,
    errorCode: str | None = None,
    cause: Mapping[str, Any] | None = None,
    duplicateOf: str | None = None,
    timestamp: str | None = None,
) -> SessionCompleteEvent:
    """``session:complete``: the one terminal record, always last (§3.2, §4.4).

    ``durationMs`` is required: every producer knows it (a run times itself, a session that never started took
    0 ms, recovery counts from ``startedAt``), and the published schema requires it."""
    _check("status", status, TERMINAL_STATUSES)
    event = _base("session:complete", sessionId, seq, timestamp)
    event["status"] = status
    event["durationMs"] = _check_duration(durationMs)
    _put(event, "error", error)
    _put(event, "errorCode", errorCode)
    _put(event, "cause", dict(cause) if cause else None)
    _put(event, "duplicateOf", duplicateOf or None)
    return cast(SessionCompleteEvent, event)
