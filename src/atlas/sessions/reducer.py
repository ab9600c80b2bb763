"""The pure fold of a session's durable events into its SessionView (spec §3.5), and its summary (§3.4).

Why pure and plain data: the same rules run in the runner (live view), in every daemon's read model, when the
read model is rebuilt from the bus, and — ported to JavaScript — in the browser; folding a finished session's
stream anywhere must give the same view. Views and events are JSON dicts with the wire's camelCase keys, so no
translation layer can drift from the spec.

Immutability: ``reduce`` and ``apply_chunk`` never mutate their inputs. They build a new top-level dict, a new
``agentBlocks`` list and new dicts for the blocks they change; untouched nested values are shared with the
previous view (structural sharing, as in Redux), and values taken from an event are deep-copied so a view
never aliases an event. Treat views as immutable values.

Idempotence: delivery is at-least-once (JetStream redeliveries, replays after reconnects, a live subscription
overlapping a replay), so the guards of §3.5 make re-applying any already-seen event a no-op: an event with
``seq <= lastSeq`` is ignored, and a terminal view only accepts ``session:summary``.

Robustness: events come off the bus and, in the UI, over the network; a malformed event must never crash a
consumer. ``reduce`` never raises on a dict event: an unknown ``type`` is ignored, and so is an event that
lacks a valid ``seq`` or the field its rule needs to find its target (``stepNumber`` of a step event,
``stateId`` of ``step:skipped``, a terminal ``status`` of ``session:complete``). Other missing or odd fields
are skipped rather than copied. Only applied events move ``lastSeq``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, NotRequired, TypeGuard, get_args

from typing_extensions import TypedDict

from atlas.sessions.events import (
    STATUSES,
    TERMINAL_STATUSES,
    ActionType,
    ChatLink,
    ChunkBody,
    Count,
    ErrorCause,
    ErrorDetails,
    JsonValue,
    KeyDetail,
    ParentId,
    SessionStatus,
    StepNumber,
    Timestamp,
    Trigger,
    Usage,
    WaitingFor,
    documented,
    duration_ms,
)

__all__ = [
    "BLOCK_STATUSES",
    "CHUNK_TYPES",
    "EPHEMERAL_LIMIT",
    "STATUSES",
    "TERMINAL_STATUSES",
    "AgentBlock",
    "AiSummary",
    "BlockStatus",
    "SessionSummary",
    "SessionView",
    "apply_chunk",
    "build_view",
    "initial_view",
    "is_terminal",
    "reduce",
    "summarize",
]

#: Statuses of an AgentBlock (§3.4).
BlockStatus = Literal["pending", "running", "completed", "failed", "skipped"]
BLOCK_STATUSES: Final[frozenset[str]] = frozenset(get_args(BlockStatus))
#: Ephemeral chunk types (§3.3); other types are ignored.
CHUNK_TYPES: Final[frozenset[str]] = frozenset({"progress", "log", "text-delta"})
#: A block keeps only its most recent ephemeral chunks (§3.5).
EPHEMERAL_LIMIT: Final = 50

# Blocks that "ran", as counted by a terminal summary (§3.4).
_RAN: Final = ("completed", "failed")


# --- the shapes -------------------------------------------------------------------------------------------
# What the fold produces, declared once: `/openapi.json` publishes JSON Schemas generated from these TypedDicts
# (`atlas.api.wire_schemas`). The fold itself works on plain dicts (`View`), since it must accept any event.


@documented
class AiSummary(TypedDict):
    """The job's rendered `summary` (from `session:summary`)."""

    summary: str
    keyDetails: list[KeyDetail]


@documented
class AgentBlock(TypedDict):
    """One step of a session, planned (`pending`) or run."""

    stepNumber: NotRequired[StepNumber]
    """Unset while the block is only planned."""
    agentName: str
    stateId: NotRequired[str]
    actionType: ActionType
    task: str
    outputKey: NotRequired[str]
    input: NotRequired[JsonValue]
    status: BlockStatus
    startedAt: NotRequired[Timestamp]
    durationMs: NotRequired[Count]
    toolCalls: list[JsonValue]
    """The step's tool calls (`ToolCallSummary`), once it ended."""
    reasoning: NotRequired[str]
    output: NotRequired[JsonValue]
    error: NotRequired[str]
    errorCode: NotRequired[str]
    ephemeral: NotRequired[list[ChunkBody]]
    """The step's latest live chunks (at most 50) while it runs; cleared when it ends."""
    usage: NotRequired[Usage]
    childSessionId: NotRequired[str]
    """For `signal` actions: the child session."""
    errorDetails: NotRequired[ErrorDetails]
    """A failed step's traceback (python) or stderr tail (shell), issue #16."""
    cause: NotRequired[ErrorCause]
    """A failed `signal` step's failed child, with its error and its own cause (issue #16)."""


@documented
class SessionView(TypedDict):
    """The fold of a session's durable events (spec §3.4, §3.5)."""

    sessionId: str
    workspaceId: str
    jobName: str
    """The job id."""
    task: str
    status: SessionStatus
    queuedAt: Timestamp
    startedAt: Timestamp
    """When it started; its `queuedAt` until then, so it is never empty."""
    agentBlocks: list[AgentBlock]
    lastSeq: Count
    signalId: str
    trigger: Trigger
    correlationId: str
    """Shared by the whole trigger tree."""
    parentSessionId: NotRequired[ParentId]
    rootSessionId: str
    depth: Count
    payload: NotRequired[JsonValue]
    """The trigger's payload (absent when it was `null`: a non-JSON webhook)."""
    results: NotRequired[dict[str, Any]]
    """`{outputKey: output}` of the completed steps."""
    completedAt: NotRequired[Timestamp]
    durationMs: NotRequired[Count]
    error: NotRequired[str]
    errorCode: NotRequired[str]
    aiSummary: NotRequired[AiSummary]
    cause: NotRequired[ErrorCause]
    """The failed child session that made this one fail, nested down to the root cause (issue #16)."""
    rerunOf: NotRequired[str]
    """The session this one re-runs (`trigger: rerun`, issue #16)."""
    chat: NotRequired[ChatLink]
    """The chat turn that started it (`trigger: chat`, issue #17)."""
    waitingFor: NotRequired[WaitingFor]
    """While `queued`: what it waits for (`pending` from `session:queued`, `concurrency` once parked); gone once it
    starts or ends (issue #16)."""
    duplicateOf: NotRequired[str]
    """A `skipped-duplicate` session: the running session that made it skip (issue #16)."""
    traceId: NotRequired[str]
    """The OpenTelemetry trace the session's spans belong to (32 hex digits), when its daemon traces (issue #18)."""


@documented
class SessionSummary(TypedDict):
    """A list item (spec §3.4); `len(agentNames) == stepCount`."""

    sessionId: str
    workspaceId: str
    jobName: str
    task: str
    status: SessionStatus
    startedAt: Timestamp
    completedAt: NotRequired[Timestamp]
    durationMs: NotRequired[Count]
    stepCount: Count
    agentNames: list[str]
    error: NotRequired[str]
    aiSummary: NotRequired[AiSummary]
    parentSessionId: NotRequired[ParentId]
    correlationId: str
    """Shared by the whole trigger tree."""
    signalId: str
    trigger: Trigger
    rootSessionId: str
    depth: Count
    queuedAt: Timestamp
    errorCode: NotRequired[str]
    rerunOf: NotRequired[str]
    """The session this one re-runs (`trigger: rerun`, issue #16)."""
    chat: NotRequired[ChatLink]
    """The chat turn that started it (`trigger: chat`, issue #17)."""
    duplicateOf: NotRequired[str]
    """A `skipped-duplicate` session: the running session that made it skip (issue #16)."""
    traceId: NotRequired[str]
    """The OpenTelemetry trace the session's spans belong to (32 hex digits), when its daemon traces (issue #18)."""


# --- small helpers ----------------------------------------------------------------------------------------

View = dict[str, Any]
Event = Mapping[str, Any]


def is_terminal(status: object) -> bool:
    """True for a status that never changes again (§3.1); False for anything else, including garbage."""
    return isinstance(status, str) and status in TERMINAL_STATUSES


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _last_seq(view: Mapping[str, Any]) -> int:
    value = view.get("lastSeq")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _blocks(view: Mapping[str, Any]) -> list[Any]:
    blocks = view.get("agentBlocks")
    return blocks if isinstance(blocks, list) else []


def _is_block(block: object, status: str) -> bool:
    return isinstance(block, dict) and block.get("status") == status


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars), several times faster than ``copy.deepcopy``, which it
    falls back to for anything else. Events come off the bus as JSON, so the fallback is rare."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: _clone(v) for k, v in value.items()}
    if kind is list:
        return [_clone(v) for v in value]
    return copy.deepcopy(value)


def _copy_present(target: dict[str, Any], source: Event, keys: Iterable[str]) -> None:
    """Copy each key whose value is present and not null (the wire omits optionals; null means absent)."""
    for key in keys:
        value = source.get(key)
        if value is not None:
            target[key] = _clone(value)


def _copy_parent(target: dict[str, Any], source: Event) -> None:
    """parentSessionId only for children: never ``null``, never ``""`` in a view (§3.4)."""
    parent = source.get("parentSessionId")
    if isinstance(parent, str) and parent:
        target["parentSessionId"] = parent


def _find_step(blocks: list[Any], step: int) -> int | None:
    """Index of the first block that started as step number ``step`` (pending blocks have no number)."""
    for index, block in enumerate(blocks):
        if isinstance(block, dict) and _is_int(block.get("stepNumber")) and block.get("stepNumber") == step:
            return index
    return None


def _timestamp(event: Event) -> str | None:
    value = event.get("timestamp")
    return value if isinstance(value, str) else None


def _planned_blocks(steps: list[Any]) -> list[dict[str, Any]]:
    """One ``pending`` block per planned step; ``stepNumber`` stays unset until the step starts."""
    blocks: list[dict[str, Any]] = []
    for step in steps:
        if not isinstance(step, Mapping):
            continue
        agent_name = step.get("agentName")
        task = step.get("task")
        action_type = step.get("actionType")
        block: dict[str, Any] = {
            "agentName": _clone(agent_name) if agent_name is not None else "unknown",
            "task": _clone(task) if task is not None else "",
            "actionType": _clone(action_type) if action_type is not None else "agent",
        }
        _copy_present(block, step, ("stateId", "outputKey"))
        block["status"] = "pending"
        block["toolCalls"] = []
        blocks.append(block)
    return blocks


def _replan(view: Mapping[str, Any], event: Event) -> list[Any]:
    """Replace the pending blocks by the event's plan; keep the plan when the event carries none."""
    blocks = _blocks(view)
    steps = event.get("plannedSteps")
    if not isinstance(steps, list):
        return list(blocks)
    kept = [block for block in blocks if not _is_block(block, "pending")]
    return kept + _planned_blocks(steps)


# --- event rules (§3.5) -----------------------------------------------------------------------------------
# Each rule returns the new view, or None when the event cannot be applied (then the view is unchanged).

_QUEUED_FIELDS: Final = (
    "sessionId",
    "workspaceId",
    "jobName",
    "signalId",
    "task",
    "trigger",
    "correlationId",
    "rootSessionId",
    "depth",
    "rerunOf",
)
_START_FIELDS: Final = (
    "sessionId",
    "workspaceId",
    "jobName",
    "task",
    "signalId",
    "correlationId",
    "rootSessionId",
    "depth",
)
_STEP_START_FIELDS: Final = ("actionType", "task", "input", "outputKey", "stateId")
_STEP_COMPLETE_FIELDS: Final = (
    "durationMs", "output", "error", "errorCode", "childSessionId", "usage", "reasoning", "errorDetails", "cause"
)


def _trace_id(traceparent: object) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), None for anything else."""
    if not isinstance(traceparent, str):
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1].strip("0123456789abcdef"):
        return None
    return parts[1]


def _on_queued(view: View, event: Event) -> View | None:
    new = dict(view)
    _copy_present(new, event, _QUEUED_FIELDS)
    _copy_parent(new, event)
    if isinstance(event.get("chat"), dict):
        new["chat"] = dict(event["chat"])
    trace_id = _trace_id(event.get("traceparent"))
    if trace_id is not None:
        new["traceId"] = trace_id
    if "payload" in event:
        new["payload"] = _clone(event["payload"])
    timestamp = _timestamp(event)
    if timestamp is not None:
        new["queuedAt"] = timestamp
        new["startedAt"] = timestamp  # never empty, even for a session that never starts (§3.4)
    new["status"] = "queued"
    new["waitingFor"] = {"reason": "pending"}  # accepted, not yet taken by a runner (issue #16)
    new["agentBlocks"] = _replan(view, event)
    return new


def _on_waiting(view: View, event: Event) -> View | None:
    waiting_for = event.get("waitingFor")
    if view.get("status") != "queued" or not isinstance(waiting_for, Mapping):
        return None  # only a queued session waits; a late or malformed one changes nothing
    new = dict(view)
    new["waitingFor"] = _clone(dict(waiting_for))
    return new


def _on_start(view: View, event: Event) -> View | None:
    new = dict(view)
    _copy_present(new, event, _START_FIELDS)
    _copy_parent(new, event)
    timestamp = _timestamp(event)
    if timestamp is not None:
        new["startedAt"] = timestamp
    new["status"] = "active"
    new.pop("waitingFor", None)
    new["agentBlocks"] = _replan(view, event)
    return new


def _on_step_start(view: View, event: Event) -> View | None:
    step = event.get("stepNumber")
    if not _is_int(step):
        return None
    agent_name = event.get("agentName")
    if agent_name is None:
        agent_name = "unknown"
    blocks = _blocks(view)
    for block in blocks:
        if (
            isinstance(block, dict)
            and _is_int(block.get("stepNumber"))
            and block.get("stepNumber") == step
            and block.get("agentName") == agent_name
        ):
            return dict(view)  # already started: a re-emitted step:start changes nothing
    timestamp = _timestamp(event)
    new_blocks = list(blocks)
    for index, block in enumerate(blocks):
        if _is_block(block, "pending") and block.get("agentName") == agent_name:
            running = dict(block)
            running["status"] = "running"
            running["stepNumber"] = step
            _copy_present(running, event, _STEP_START_FIELDS)  # stateId: the event's, else the planned one
            if timestamp is not None:
                running["startedAt"] = timestamp
            new_blocks[index] = running
            break
    else:
        action_type = event.get("actionType")
        task = event.get("task")
        appended: dict[str, Any] = {
            "stepNumber": step,
            "agentName": _clone(agent_name),
            "actionType": _clone(action_type) if action_type is not None else "agent",
            "task": _clone(task) if task is not None else "",
        }
        _copy_present(appended, event, ("stateId", "input", "outputKey"))
        appended["status"] = "running"
        if timestamp is not None:
            appended["startedAt"] = timestamp
        appended["toolCalls"] = []
        new_blocks.append(appended)
    new = dict(view)
    new["agentBlocks"] = new_blocks
    return new


def _on_step_complete(view: View, event: Event) -> View | None:
    step = event.get("stepNumber")
    if not _is_int(step):
        return None
    status = event.get("status")
    valid_status = status in _RAN
    blocks = _blocks(view)
    new_blocks = list(blocks)
    index = _find_step(blocks, step)
    if index is not None:
        target = dict(blocks[index])
    else:
        # No block: a step we never saw start (e.g. a hand-made log). Keep its result in a placeholder.
        index = len(new_blocks)
        target = {"stepNumber": step, "agentName": "unknown", "actionType": "agent", "task": ""}
        target["status"] = "failed"
        target["toolCalls"] = []
        new_blocks.append(target)
    if valid_status:
        target["status"] = status
    _copy_present(target, event, _STEP_COMPLETE_FIELDS)  # the event's value, else the block's own
    tool_calls = event.get("toolCalls")
    if isinstance(tool_calls, list):
        target["toolCalls"] = _clone(tool_calls)
    target.pop("ephemeral", None)
    new_blocks[index] = target
    new = dict(view)
    new["agentBlocks"] = new_blocks
    return new


def _on_step_skipped(view: View, event: Event) -> View | None:
    state_id = event.get("stateId")
    if state_id is None:
        return None
    agent_name = event.get("agentName")
    blocks = _blocks(view)
    new = dict(view)
    for index, block in enumerate(blocks):
        if (
            _is_block(block, "pending")
            and block.get("stateId") == state_id
            and (agent_name is None or block.get("agentName") == agent_name)
        ):
            new_blocks = list(blocks)
            new_blocks[index] = {**block, "status": "skipped"}
            new["agentBlocks"] = new_blocks
            break
    return new


def _on_complete(view: View, event: Event) -> View | None:
    status = event.get("status")
    if not is_terminal(status):
        return None  # a session:complete must end the session; anything else is malformed
    error = event.get("error")
    error_code = event.get("errorCode")
    new_blocks: list[Any] = []
    for block in _blocks(view):
        if _is_block(block, "pending"):
            block = {**block, "status": "skipped"}
        elif _is_block(block, "running"):
            # Cancel/timeout normally fail the running step first; if not, it failed with the session (A).
            block = {**block, "status": "failed"}
            if error is not None:
                block["error"] = _clone(error)
            if error_code is not None:
                block["errorCode"] = _clone(error_code)
            block.pop("ephemeral", None)
        new_blocks.append(block)
    results: dict[str, Any] = {}
    for block in new_blocks:
        if _is_block(block, "completed") and block.get("output") is not None:
            key = block.get("outputKey")
            if isinstance(key, str):
                results[key] = block["output"]
    new = dict(view)
    new["agentBlocks"] = new_blocks
    new["status"] = status
    new.pop("waitingFor", None)
    if results:
        new["results"] = results
    else:
        new.pop("results", None)
    completed_at = _timestamp(event)
    if completed_at is not None:
        new["completedAt"] = completed_at
    event_duration = event.get("durationMs")
    if _is_number(event_duration):
        new["durationMs"] = event_duration
    else:
        computed = _computed_duration(new.get("startedAt"), new.get("completedAt"))
        if computed is not None:
            new["durationMs"] = computed
    if error is not None:
        new["error"] = _clone(error)
    if error_code is not None:
        new["errorCode"] = _clone(error_code)
    cause = event.get("cause")
    if isinstance(cause, Mapping):
        new["cause"] = _clone(cause)
    duplicate_of = event.get("duplicateOf")
    if isinstance(duplicate_of, str) and duplicate_of:
        new["duplicateOf"] = duplicate_of
    return new


def _computed_duration(started_at: object, completed_at: object) -> int | None:
    if not isinstance(started_at, str) or not isinstance(completed_at, str):
        return None
    try:
        return duration_ms(started_at, completed_at)
    except (ValueError, TypeError, OverflowError):
        return None


def _on_summary(view: View, event: Event) -> View | None:
    summary = event.get("summary")
    key_details = event.get("keyDetails")
    new = dict(view)
    new["aiSummary"] = {
        "summary": _clone(summary) if summary is not None else "",
        "keyDetails": _clone(key_details) if isinstance(key_details, list) else [],
    }
    return new


_RULES: Final[dict[str, Callable[[View, Event], View | None]]] = {
    "session:queued": _on_queued,
    "session:waiting": _on_waiting,
    "session:start": _on_start,
    "step:start": _on_step_start,
    "step:complete": _on_step_complete,
    "step:skipped": _on_step_skipped,
    "session:complete": _on_complete,
    "session:summary": _on_summary,
}


# --- public API -------------------------------------------------------------------------------------------


def initial_view() -> dict[str, Any]:
    """The empty view every fold starts from (§3.5); a fresh object each call, so callers may not share it."""
    return {
        "sessionId": "",
        "workspaceId": "",
        "jobName": "",
        "task": "",
        "status": "queued",
        "queuedAt": "",
        "startedAt": "",
        "agentBlocks": [],
        "lastSeq": 0,
    }


def reduce(view: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """Apply one durable event to a view and return the new view; never mutates either argument.

    Guards first (§3.5, A): an event whose ``seq`` is not above ``lastSeq`` (or is missing) returns ``view``
    itself; a terminal view only accepts ``session:summary``. An applied event sets ``lastSeq = seq``.
    """
    if not isinstance(event, Mapping):
        return view
    seq = event.get("seq")
    if not _is_int(seq) or seq <= _last_seq(view):
        return view
    event_type = event.get("type")
    if not isinstance(event_type, str):
        return view
    if is_terminal(view.get("status")) and event_type != "session:summary":
        return view
    rule = _RULES.get(event_type)
    if rule is None:
        return view  # unknown types are ignored (forward compatibility)
    new = rule(view, event)
    if new is None:
        return view
    new["lastSeq"] = seq
    return new


def apply_chunk(view: dict[str, Any], chunk: Mapping[str, Any]) -> dict[str, Any]:
    """Attach a live-only chunk ``{sessionId, stepNumber?, chunk}`` to a block's ``ephemeral`` list (§3.3).

    The target is the block with that ``stepNumber``, else the first ``running`` block; with neither, or on a
    terminal view (a chunk that overtook its session's end is stale), ``view`` is returned unchanged. Only the
    last 50 chunks are kept, and ``lastSeq`` does not move: chunks are not part of the durable log.
    """
    if not isinstance(chunk, Mapping) or is_terminal(view.get("status")):
        return view
    body = chunk.get("chunk")
    if not isinstance(body, Mapping):
        return view
    chunk_type = body.get("type")
    if not isinstance(chunk_type, str) or chunk_type not in CHUNK_TYPES:
        return view
    blocks = _blocks(view)
    step = chunk.get("stepNumber")
    target: int | None = None
    if _is_int(step):
        target = _find_step(blocks, step)
    if target is None:
        target = next((index for index, block in enumerate(blocks) if _is_block(block, "running")), None)
    if target is None:
        return view
    block = dict(blocks[target])
    previous = block.get("ephemeral")
    ephemeral = list(previous) if isinstance(previous, list) else []
    ephemeral.append(_clone(dict(body)))
    block["ephemeral"] = ephemeral[-EPHEMERAL_LIMIT:]
    new_blocks = list(blocks)
    new_blocks[target] = block
    new = dict(view)
    new["agentBlocks"] = new_blocks
    return new


def build_view(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold events, in the given order, from :func:`initial_view`; duplicates and stale events are no-ops."""
    view = initial_view()
    for event in events:
        view = reduce(view, event)
    return view


def summarize(view: Mapping[str, Any]) -> dict[str, Any]:
    """The SessionSummary of a view (§3.4): the list item, kept live and persisted at the end.

    ``stepCount``/``agentNames``: while ``queued`` or ``active`` every block counts, pending included, so a
    list shows the plan; once terminal only blocks that ran (``completed``/``failed``) count, also for
    ``interrupted``. ``agentNames`` follows block order with duplicates, so ``len(agentNames) == stepCount``.
    Optional keys are omitted when absent; ``parentSessionId`` also when empty.
    """
    status = view.get("status")
    blocks = [block for block in _blocks(view) if isinstance(block, Mapping)]
    if is_terminal(status):
        counted = [block for block in blocks if block.get("status") in _RAN]
    else:
        counted = blocks
    agent_names = [block.get("agentName", "unknown") for block in counted]

    def field(key: str, default: Any) -> Any:
        value = view.get(key)
        return default if value is None else value

    summary: dict[str, Any] = {
        "sessionId": field("sessionId", ""),
        "workspaceId": field("workspaceId", ""),
        "jobName": field("jobName", ""),
        "task": field("task", ""),
        "status": field("status", "queued"),
        "startedAt": field("startedAt", ""),
        "stepCount": len(agent_names),
        "agentNames": agent_names,
        "correlationId": field("correlationId", ""),
        "signalId": field("signalId", ""),
        "trigger": field("trigger", ""),
        "rootSessionId": field("rootSessionId", ""),
        "depth": field("depth", 0),
        "queuedAt": field("queuedAt", ""),
    }
    for key in ("completedAt", "durationMs", "error", "errorCode", "rerunOf", "duplicateOf", "traceId"):
        value = view.get(key)
        if value is not None:
            summary[key] = value
    chat = view.get("chat")
    if isinstance(chat, dict):
        summary["chat"] = dict(chat)
    ai_summary = view.get("aiSummary")
    if ai_summary is not None:
        summary["aiSummary"] = _clone(ai_summary)
    parent = view.get("parentSessionId")
    if isinstance(parent, str) and parent:
        summary["parentSessionId"] = parent
    return summary
