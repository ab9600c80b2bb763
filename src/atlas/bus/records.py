"""The records atlas keeps on the bus besides session events: the SIGNALS envelope, the KV layouts of spec §6
and §8.1, and the cancel request broadcast to the runners.

Why one module: each layout was built in one place and read in two or three others, so a key renamed on one side
would have been silently ignored on the other (and a record written by an older daemon must still be read). Here
every layout has one TypedDict, one function that builds it and, where readers need defaults, one that reads it;
everything else only calls them. The JSON shapes are exactly what earlier versions wrote (a home written by them
keeps working). They are plain dicts, not models: several are built on the trigger path, where validation and
copies would cost throughput, and the TypedDicts only document and type-check their shape.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from atlas.jsoncodec import dumps, loads

__all__ = [
    "ENVELOPE_REQUIRED",
    "CancelRequestRecord",
    "ConcurrencyRecord",
    "CronClaim",
    "Envelope",
    "Heartbeat",
    "InflightMarker",
    "WorkspaceRegistration",
    "cancel_request",
    "concurrency_key",
    "concurrency_record",
    "cron_claim",
    "cron_claim_result",
    "envelope",
    "envelope_from_queued",
    "envelope_is_complete",
    "heartbeat",
    "parked_marker",
    "read_cancel_request",
    "read_concurrency",
    "workspace_registration",
]


# ---------------------------------------------------------------- SIGNALS


class Envelope(TypedDict):
    """A trigger on SIGNALS (spec §6.4): what the consumer needs to start the session, deduplicated by sessionId."""

    workspaceId: str
    signalId: str
    sessionId: str
    correlationId: str
    rootSessionId: str
    depth: int
    trigger: str
    payload: Any
    acceptedAt: NotRequired[str | None]
    acceptedBy: NotRequired[str | None]
    parentSessionId: NotRequired[str | None]
    streamId: NotRequired[str]
    webhook: NotRequired[dict[str, Any]]
    skipStates: NotRequired[list[str]]
    rerunOf: NotRequired[str]
    chat: NotRequired[dict[str, str]]
    traceparent: NotRequired[str]  # W3C trace context of the trigger (issue #18): the session span's parent


ENVELOPE_REQUIRED = ("workspaceId", "signalId", "sessionId", "correlationId", "rootSessionId", "depth", "trigger")
"""Keys without which an envelope cannot be run (a malformed one is dead-lettered)."""


def envelope(*, workspace_id: str, signal_id: str, session_id: str, correlation_id: str, root_session_id: str,
             depth: int, trigger: str, payload: Any, accepted_at: str, accepted_by: str,
             parent_session_id: str | None = None, stream_id: str | None = None,
             webhook: dict[str, Any] | None = None, skip_states: list[str] | None = None,
             rerun_of: str | None = None, chat: dict[str, str] | None = None) -> dict[str, Any]:
    """The envelope of an accepted trigger (the accept pipeline's). A plain dict typed loosely on purpose: it is
    built on every trigger and handed on as is (see `Envelope` for its shape)."""
    out: dict[str, Any] = {
        "workspaceId": workspace_id,
        "signalId": signal_id,
        "sessionId": session_id,
        "correlationId": correlation_id,
        "rootSessionId": root_session_id,
        "depth": depth,
        "trigger": trigger,
        "payload": payload,
        "acceptedAt": accepted_at,
        "acceptedBy": accepted_by,
    }
    if parent_session_id is not None:
        out["parentSessionId"] = parent_session_id
    if stream_id is not None:
        out["streamId"] = stream_id
    if webhook is not None:
        out["webhook"] = webhook
    if skip_states:
        out["skipStates"] = skip_states
    if rerun_of is not None:
        out["rerunOf"] = rerun_of
    if chat is not None:
        out["chat"] = chat
    return out


_FROM_QUEUED = ("workspaceId", "signalId", "sessionId", "correlationId", "parentSessionId", "rootSessionId", "depth",
                "trigger", "payload", "skipStates", "rerunOf", "chat", "traceparent")


def envelope_from_queued(event: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a session, rebuilt from its `session:queued` (which carries everything the consumer needs;
    a webhook's raw body and an SSE stream id are not kept there, and a session republished this way runs
    without them; `skipStates` is). Recovery republishes it when the original envelope may never have landed."""
    out = {k: event[k] for k in _FROM_QUEUED if event.get(k) is not None or k == "payload"}
    out["acceptedAt"] = event.get("timestamp")
    return out


def envelope_is_complete(value: Any) -> bool:
    """Whether a decoded SIGNALS message is an envelope the consumer can run."""
    return isinstance(value, dict) and all(k in value for k in ENVELOPE_REQUIRED)


# ---------------------------------------------------------------- SESSION_INFLIGHT


class InflightMarker(TypedDict):
    """SESSION_INFLIGHT, key = sessionId: a session parked in its key's queue (the only sessions that have one
    now; markers of older versions lack `parked` and may say `state: active`)."""

    sessionId: str
    workspaceId: str
    signalId: str
    correlationId: str
    state: str
    acceptedBy: str | None
    acceptedAt: str | None
    envelope: dict[str, Any]  # an `Envelope`
    parked: NotRequired[bool]


def parked_marker(envelope: dict[str, Any]) -> InflightMarker:
    """The marker of a session parked in its key's queue: recovery and the promoter start it from its envelope."""
    return {
        "sessionId": envelope["sessionId"],
        "workspaceId": envelope["workspaceId"],
        "signalId": envelope["signalId"],
        "correlationId": envelope["correlationId"],
        "state": "queued",
        "acceptedBy": envelope.get("acceptedBy"),
        "acceptedAt": envelope.get("acceptedAt"),
        "envelope": envelope,
        "parked": True,
    }


# ---------------------------------------------------------------- CONCURRENCY


class ConcurrencyRecord(TypedDict):
    """CONCURRENCY, key = `<workspaceId>.<signalId>`: who holds a non-concurrent key and who waits, in order."""

    holders: list[str]
    queue: list[str]


def concurrency_key(workspace_id: str, signal_id: str) -> str:
    return f"{workspace_id}.{signal_id}"


def concurrency_record(holders: list[str], queue: list[str]) -> ConcurrencyRecord:
    return {"holders": holders, "queue": queue}


def read_concurrency(value: Any) -> ConcurrencyRecord:
    """A stored record as fresh lists (callers change them before a compare-and-set); missing fields are empty."""
    return {"holders": list(value.get("holders", [])), "queue": list(value.get("queue", []))}


# ---------------------------------------------------------------- DAEMONS


class Heartbeat(TypedDict):
    """DAEMONS, key = daemonId (the bucket's TTL expires it): a live daemon process and where it answers."""

    url: str
    pid: int
    version: str
    startedAt: str


def heartbeat(*, url: str, pid: int, version: str, started_at: str) -> Heartbeat:
    return {"url": url, "pid": pid, "version": version, "startedAt": started_at}


# ---------------------------------------------------------------- WORKSPACES


class WorkspaceRegistration(TypedDict):
    """WORKSPACES, key = workspace id: a workspace added on some daemon, which every daemon loads at start."""

    path: str
    configDigest: str
    addedAt: str


def workspace_registration(*, path: str, config_digest: str, added_at: str) -> WorkspaceRegistration:
    return {"path": path, "configDigest": config_digest, "addedAt": added_at}


# ---------------------------------------------------------------- CRON_CLAIMS


class CronClaim(TypedDict):
    """CRON_CLAIMS, key = `<ws>.<sig>.<epoch seconds>`: the daemon that fires one schedule slot (and, once
    accepted, the session it became)."""

    daemonId: str
    claimedAt: NotRequired[str]
    sessionId: NotRequired[str]
    correlationId: NotRequired[str]


def cron_claim(daemon_id: str, claimed_at: str) -> CronClaim:
    return {"daemonId": daemon_id, "claimedAt": claimed_at}


def cron_claim_result(daemon_id: str, session_id: str, correlation_id: str) -> CronClaim:
    return {"daemonId": daemon_id, "sessionId": session_id, "correlationId": correlation_id}


# ---------------------------------------------------------------- atlas.cancel.sessions.<sid>


class CancelRequestRecord(TypedDict):
    """A cancel broadcast to whichever daemon runs the session (spec §8.3)."""

    status: str
    errorCode: str
    reason: str
    requestedAt: str


def cancel_request(status: str, code: str, reason: str, requested_at: str) -> bytes:
    record: CancelRequestRecord = {"status": status, "errorCode": code, "reason": reason, "requestedAt": requested_at}
    return dumps(record)


def read_cancel_request(data: bytes | None) -> tuple[str, str, str]:
    """(status, errorCode, reason) of a cancel message; an empty or partial one cancels by the user's defaults."""
    value = loads(data) if data else {}
    return (str(value.get("status", "cancelled")), str(value.get("errorCode", "cancelled_by_user")),
            str(value.get("reason", "Cancelled")))
