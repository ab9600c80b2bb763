"""The OpenAPI 3.1 document served at `GET /openapi.json` (spec §9).

The routes take the raw `Request` and return pre-encoded JSON (the hot path must stay cheap), so no framework can
infer their parameters, bodies or responses. This module describes them by hand instead, as plain data built from a few
helpers: every route of the API, its path, query and header parameters, its request body, and every status it can
answer with the schema of that answer and its error codes. The session shapes are the exception: the durable
events, SessionView, AgentBlock and SessionSummary (and what they reference) are generated from the TypedDicts that
declare them (`atlas.api.wire_schemas`), so they cannot drift from what the runtime writes. The schemas follow
what the server really sends (optional keys are not required, `null` only where it can occur, open objects where
more keys may appear), and `tests/test_openapi.py` holds the document to that with a schemathesis run against a
live daemon.

Conventions: components are JSON Schema 2020-12 (OpenAPI 3.1); an error answer is `Error` narrowed to the codes
the operation can give (`code` is an `enum`), with `details` typed per code where the code always has the same
details.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any, get_args

from starlette.requests import Request
from starlette.responses import Response

from atlas import __version__
from atlas.api.errors import STATUS
from atlas.api.wire_schemas import component_schemas
from atlas.sessions.events import ActionType, SessionStatus, TerminalStatus, Trigger
from atlas.sessions.reducer import BlockStatus

Schema = dict[str, Any]

JSON = "application/json"
SSE = "text/event-stream"

# The session vocabularies, as the event model declares them (for the parameters and error details below).
SESSION_STATUSES: list[str] = list(get_args(SessionStatus))
TERMINAL_STATUSES: list[str] = list(get_args(TerminalStatus))
TRIGGERS: list[str] = list(get_args(Trigger))
ACTION_TYPES: list[str] = list(get_args(ActionType))
BLOCK_STATUSES: list[str] = list(get_args(BlockStatus))
CONCURRENCY = ["skip", "queue", "concurrent", "replace"]
ENVELOPE_KEYS = ["payload", "streamId", "parentSessionId", "skipStates", "bypassConcurrency"]

# `nowait` and `force` are case-insensitive; JSON Schema patterns have no flags, hence the character classes.
_BOOL_WORDS = "[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0|[Yy][Ee][Ss]|[Nn][Oo]"
BOOL_QUERY_PATTERN = f"^({_BOOL_WORDS})$"
STATUS_LIST_PATTERN = "^({0})(,({0}))*$".format("|".join(SESSION_STATUSES))


# ---------------------------------------------------------------------------------------------- helpers


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema] | None = None, optional: dict[str, Schema] | None = None, *,
        closed: bool = False, description: str | None = None) -> Schema:
    """An object schema; `closed` forbids keys beyond the listed ones (only where the server guarantees it)."""
    props = {**(required or {}), **(optional or {})}
    out: Schema = {"type": "object"}
    if description:
        out["description"] = description
    if props:
        out["properties"] = props
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def string(description: str | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "string", **extra}
    if description:
        out["description"] = description
    return out


def integer(minimum: int | None = 0, description: str | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "integer", **extra}
    if minimum is not None:
        out["minimum"] = minimum
    if description:
        out["description"] = description
    return out


def array(items: Schema, description: str | None = None) -> Schema:
    out: Schema = {"type": "array", "items": items}
    if description:
        out["description"] = description
    return out


def enum(values: Iterable[str], description: str | None = None) -> Schema:
    return string(description, enum=list(values))


def nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


TIMESTAMP = string("RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T10:15:02.123Z`", format="date-time")


def json_content(schema: Schema, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def response(description: str, schema: Schema | None = None, *, headers: dict[str, Any] | None = None,
             example: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = json_content(schema, example)
    if headers:
        out["headers"] = headers
    return out


def header(description: str, schema: Schema | None = None, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema or string()}


# ---------------------------------------------------------------------------------------------- errors

# Every error code of spec §9 (plus the few the implementation adds), with what it means. Responses list the
# codes they can carry, and their descriptions are generated from this table, so the two never disagree.
ERROR_CODES: dict[str, str] = {
    "invalid_json": "the body is not valid JSON (with a JSON `Content-Type`)",
    "invalid_body": "the body is well-formed JSON of the wrong shape (`details`: `[{path, message}]` where known)",
    "invalid_query": "a query parameter is unknown or has a bad value (`details`: `[{path, message}]`)",
    "envelope_required": "a webhook-shaped body for a non-`http` signal, or with `Accept: text/event-stream`",
    "payload_invalid": "the payload does not match the signal's `schema` (`details`: `[{path, message}]`)",
    "payload_too_complex": "the payload is nested deeper than 32, has over 100 000 values or a string over 256 KiB",
    "invalid_idempotency_key": "`Idempotency-Key` is not 1–255 printable ASCII characters",
    "path_not_found": "nothing exists at the given path",
    "not_a_workspace": "the path is a file not named `workspace.yml` / `workspace.yaml` (it is not read)",
    "path_not_allowed": "the path (symlinks resolved) is outside `ATLAS_WORKSPACE_ROOTS` (`details.roots`)",
    "unauthorized": "`ATLAS_TOKEN` (or `ATLAS_REQUIRE_TOKEN`) is set and the request has no valid "
                    "`Authorization: Bearer <token>`",
    "host_not_allowed": "the `Host` header is not a loopback name, the bind address or in `ATLAS_ALLOWED_HOSTS`",
    "forbidden_origin": "a state-changing request from a foreign `Origin` (or `Sec-Fetch-Site: cross-site`)",
    "forbidden": "this daemon was not started by `atlasd` and cannot be shut down over HTTP",
    "workspace_not_found": "no workspace has this id",
    "signal_not_found": "the workspace has no signal with this id",
    "no_job_for_signal": "no job of the workspace is triggered by this signal",
    "session_not_found": "no session has this id",
    "correlation_not_found": "no session has this correlationId (after waiting up to 2 s for it)",
    "schedule_not_found": "the workspace has no `schedule` signal with this id",
    "chat_not_found": "the workspace has no chat with this id",
    "chat_busy": "a reply is already being written in this chat (`details`: `{chatId, turnId}`)",
    "chat_unavailable": "no chat model is configured (set `ATLAS_CHAT_MODEL` and `ATLAS_CHAT_PROVIDER`, or the "
                        "workspace's `chat.model`), its key is missing, or the workspace disabled chat",
    "memory_not_found": "the workspace declares no memory corpus of this name under `memory.own` (`details.declared`)",
    "memory_entry_not_found": "the memory corpus holds no entry with this id",
    "skipped-duplicate": "policy `skip` found a running session of this signal (`details`: the session record, "
                         "with `runningSessionId` when known)",
    "session_not_active": "the session already ended (`details.status`: its terminal status)",
    "session_not_finished": "the session is still queued or active, so it cannot be re-run yet "
                            "(`details.status`: its current status)",
    "idempotency_key_in_progress": "a request with the same `Idempotency-Key` is still in flight after 5 s "
                                   "(`Retry-After: 1`)",
    "cascade_limit_exceeded": "the envelope's `parentSessionId` names a tree that already holds "
                              "`ATLAS_MAX_TREE_SESSIONS` sessions (no session is created)",
    "workspace_exists": "the workspace id is already used by another path",
    "workspace_busy": "the workspace has active sessions; retry with `?force=true` "
                      "(`details.activeSessionIds`)",
    "body_too_large": "the body exceeds `ATLAS_MAX_BODY` (1 MiB by default)",
    "workspace_invalid": "the workspace file is invalid (`details`: `[{file, line, column, path, message}]`)",
    "unknown_parent_session": "the envelope's `parentSessionId` names no known session",
    "agent_unavailable": "the job uses an agent atlas cannot run (a Friday `type: system` or bundled agent); "
                         "nothing is created (`details`: `{jobId, agents: [{id, agent}]}`)",
    "bypass_not_allowed": "the envelope asks for `bypassConcurrency: true`, which is internal (never over HTTP)",
    "idempotency_key_mismatch": "the `Idempotency-Key` was used before with a different body",
    "session_failed": "the session ended `failed` or `interrupted` (`details`: the session record)",
    "session_cancelled": "the session ended `cancelled` (`details`: the session record)",
    "session_skipped": "the session ended `skipped` (`details`: the session record)",
    "internal_error": "an unexpected server error; never a stack trace (`details.requestId`, also in "
                      "`X-Request-Id`)",
    "bus_unavailable": "the message bus (NATS JetStream) cannot be reached",
    "read_model_unavailable": "the PostgreSQL read model (ATLAS_DATABASE_URL) cannot be reached",
    "shutting_down": "the daemon is shutting down and accepts no new triggers",
    "wait_timeout": "the session did not end within the wait limit; it keeps running "
                    "(`details`: `{sessionId, correlationId}`)",
}

# `details` shapes that a code always has; codes not listed here either have no details or varied ones.
_ISSUES = array(ref("Issue"))
ERROR_DETAILS: dict[str, Schema] = {
    "payload_invalid": _ISSUES,
    "invalid_query": _ISSUES,
    "invalid_body": _ISSUES,
    "workspace_invalid": array(ref("ValidationError")),
    "skipped-duplicate": ref("SessionErrorDetails"),
    "session_failed": ref("SessionErrorDetails"),
    "session_cancelled": ref("SessionErrorDetails"),
    "session_skipped": ref("SessionErrorDetails"),
    "session_not_active": obj({"status": enum(TERMINAL_STATUSES)}),
    "session_not_finished": obj({"status": enum(["queued", "active"])}),
    "workspace_busy": obj({"activeSessionIds": array(string())}),
    "path_not_allowed": obj({"roots": array(string())}),
    "memory_not_found": obj({"declared": array(string(), "The corpora `memory.own` declares")}),
    "wait_timeout": obj({"sessionId": string(), "correlationId": string()}),
    "internal_error": obj({"requestId": string()}),
}

_ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "unauthorized": {"WWW-Authenticate": header("Always `Bearer`", enum(["Bearer"]), required=True)},
    "idempotency_key_in_progress": {"Retry-After": header("Seconds to wait before retrying (`1`)")},
    "internal_error": {"X-Request-Id": header("The id logged with the error", required=True)},
}


def error_schema(codes: list[str]) -> Schema:
    """`Error` narrowed to `codes`, with the `details` shape of each code that has a fixed one."""
    parts: list[Schema] = [ref("Error"), {"properties": {"error": {"properties": {"code": enum(codes)}}}}]
    for code in codes:
        details = ERROR_DETAILS.get(code)
        if details is not None:
            parts.append({
                "if": {"properties": {"error": {"properties": {"code": {"const": code}}}}},
                "then": {"properties": {"error": {"properties": {"details": details}}}},
            })
    return {"allOf": parts}


def error_response(summary: str, codes: list[str]) -> dict[str, Any]:
    lines = "\n".join(f"- `{code}`: {ERROR_CODES[code]}" for code in codes)
    headers: dict[str, Any] = {}
    for code in codes:
        for name, value in _ERROR_HEADERS.get(code, {}).items():
            # A header only some codes of this status carry cannot be required of the whole response.
            headers[name] = value if len(codes) == 1 else {**value, "required": False}
    return response(f"{summary}. Error codes:\n{lines}", error_schema(codes), headers=headers or None)


def errors(*, method: str, open_route: bool = False, codes: Iterable[str] = (),
           reads_body: bool = False) -> dict[str, Any]:
    """The error responses of an operation: its own `codes` plus those every route can give (security, 500), each
    under the status the API's one table gives it (`atlas.api.errors.STATUS`)."""
    common = [] if open_route else ["unauthorized"]
    common += ["host_not_allowed"] + (["forbidden_origin"] if method in ("post", "patch", "delete") else [])
    common += (["body_too_large"] if reads_body else []) + ["internal_error"]
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys([*common, *codes]):
        by_status.setdefault(STATUS[code], []).append(code)
    titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
              413: "Payload too large", 422: "Unprocessable", 500: "Internal server error",
              503: "Service unavailable", 504: "Gateway timeout"}
    return {str(status): error_response(titles[status], by_status[status]) for status in sorted(by_status)}


# ---------------------------------------------------------------------------------------------- parameters


def path_param(name: str, description: str, example: str, *, not_values: list[str] | None = None) -> dict[str, Any]:
    # One path segment: a `/` (even percent-encoded) would route elsewhere, and `.`/`..` are dot segments.
    schema = string(pattern="^[^/]+$", minLength=1)
    schema["not"] = {"enum": [".", "..", *(not_values or [])]}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema,
            "example": example}


def query_param(name: str, description: str, schema: Schema, example: Any = None) -> dict[str, Any]:
    out = {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
    if example is not None:
        out["example"] = example
    return out


WORKSPACE_ID = path_param("workspace_id", "Workspace id (the `workspace.id` of its `workspace.yml`)", "demo")
SIGNAL_ID = path_param("signal_id", "Signal id (a key under `signals:`)", "count-and-sleep")
SESSION_ID = path_param("session_id", "Session id (a UUID v4 minted at acceptance)",
                        "7f0c2a51-8d7e-4f43-9a51-0b8f6c1de2aa", not_values=["stream"])


# ---------------------------------------------------------------------------------------------- components


def _schemas() -> dict[str, Schema]:
    issue = obj({"path": string("Dotted path of the offending value (`\"\"` for the root)"),
                 "message": string()})
    s: dict[str, Schema] = {}
    s["Issue"] = issue
    s["ValidationError"] = obj(
        {"file": string(), "line": integer(1), "column": integer(1), "path": string(), "message": string()},
        description="A `workspace.yml` problem (spec §2.8); `line`/`column` are 1-based",
    )
    s["Error"] = obj(
        {"error": obj({"code": string("Stable machine-readable code"), "message": string("For people")},
                      {"details": {"description": "Code-specific details (see each response)"}}, closed=True)},
        closed=True,
        description="Every error of the API, including 404 `not_found` for unknown routes and 405 "
                    "`method_not_allowed` for wrong methods",
    )
    s["SessionErrorDetails"] = obj(
        {"sessionId": string(), "correlationId": string(), "status": enum(TERMINAL_STATUSES),
         "errorCode": nullable(string()), "error": nullable(string())},
        {"runningSessionId": string("For `skipped-duplicate`: the session holding the key")},
        description="The session behind a sync-mode failure; `errorCode` and `error` are null when unset",
    )

    # -- daemon
    s["Health"] = obj({
        "status": enum(["ok", "starting", "stopping", "degraded"],
                       "`starting` until the first recovery pass is done; `stopping` while shutting down; "
                       "`degraded` while the bus cannot take writes (see `bus`) or the read model is unavailable "
                       "(see `readModel`)"),
        "bus": enum(["ok", "degraded"], "`degraded` while the bus is disconnected or its store cannot write (a full "
                                        "disk): triggers get 503 `bus_unavailable` until it recovers by itself"),
        "readModel": obj({
            "kind": enum(["sqlite", "postgresql"], "`postgresql` with `ATLAS_DATABASE_URL` (shared by the cluster)"),
            "available": {"type": "boolean", "description": "False while read-model writes fail (a full disk) or "
                                                            "the shared database cannot be reached: triggers get "
                                                            "503 then"},
        }),
        "uptime": {"type": "number", "minimum": 0, "description": "Seconds since start"},
        "timestamp": TIMESTAMP,
        "version": string(),
        "activeWorkspaces": integer(),
        "activeSessions": integer(description="Sessions running on this daemon"),
    })
    s["ClusterDaemon"] = obj(
        {"daemonId": string()},
        {"url": string(), "pid": integer(1), "version": string(), "startedAt": TIMESTAMP},
        description="A live daemon of the cluster (its `DAEMONS` heartbeat record)",
    )
    s["DaemonStatus"] = obj({
        "status": {"const": "running"},
        "version": string(),
        "pid": integer(1),
        "daemonId": string(),
        "startedAt": TIMESTAMP,
        "uptime": {"type": "number", "minimum": 0},
        "bind": string("`host:port` the API listens on"),
        "nats": obj({"mode": enum(["embedded", "external"]), "url": string("Without credentials")}),
        "sessions": obj({"queued": integer(), "active": integer()},
                        description="Non-terminal sessions in this daemon's read model"),
        "workspaces": integer(),
        "memoryUsage": obj({"rss": integer(description="Peak resident set size in bytes")}),
        "cluster": array(ref("ClusterDaemon")),
    }, {"traceUrlTemplate": string("ATLAS_TRACE_URL_TEMPLATE: a trace's page, `{traceId}` to fill in (issue #18)")})
    s["Message"] = obj({"message": string()})
    s["RebuildResult"] = obj(
        {"events": integer(description="Events replayed from SESSION_EVENTS"),
         "sessions": integer(description="Sessions those events belong to"),
         "written": integer(description="Rows written: missing or behind the log (0 when the read model was right)"),
         "partial": integer(description="Sessions skipped: their first event has left the stream (retention), "
                                        "so no row is folded from their tail"),
         "readModel": enum(["sqlite", "postgresql"], "Where this daemon's read model lives")},
        closed=True,
        description="The counts of a read-model rebuild",
    )

    # -- workspaces
    s["WorkspaceEntry"] = obj({
        "id": string(), "name": string(), "description": string(), "path": string("Absolute directory"),
        "configPath": string("Absolute path of its `workspace.yml`"),
        "status": enum(["ready", "invalid", "missing"]),
        "createdAt": TIMESTAMP, "lastSeen": TIMESTAMP, "signalCount": integer(), "jobCount": integer(),
        "warnings": array(ref("ValidationError"), "Keys of Friday's schema that atlas does not implement (ignored), "
                                                  "and other load warnings, with their positions"),
    })
    s["WorkspaceConfig"] = obj(
        {"version": {"const": "1.0"},
         "workspace": obj({"name": string()}, {"id": string(), "description": string(), "welcome": string(),
                                               "timeout": obj({"maxTotalTimeout": string()})}),
         "signals": {"type": "object", "additionalProperties": ref("SignalDefinition")},
         "jobs": {"type": "object", "additionalProperties": {"type": "object"}},
         "agents": {"type": "object", "additionalProperties": {"type": "object"}}},
        description="The normalised `workspace.yml` (defaults filled in, unset optional keys omitted)",
    )
    s["WorkspaceDetail"] = {"allOf": [ref("WorkspaceEntry"), obj(
        {"config": ref("WorkspaceConfig")},
        {"errors": array(ref("ValidationError"), "Problems found when it was last loaded")},
    )]}
    s["AddWorkspaceRequest"] = obj(
        {"path": string("Absolute path of the workspace directory (or of its `workspace.yml`)", pattern="^/")},
        {"name": string("Accepted for compatibility; the name shown comes from `workspace.yml`"),
         "description": string("Accepted for compatibility; the description shown comes from `workspace.yml`")},
    )
    s["WorkspaceAdded"] = obj({
        "id": string(), "name": string(), "description": string(), "status": enum(["ready", "invalid", "missing"]),
        "path": string(), "createdAt": TIMESTAMP, "lastSeen": TIMESTAMP,
        "created": {"type": "boolean", "description": "false when the workspace existed and was reloaded"},
    })
    s["WorkspaceRemoved"] = obj({"message": string(), "id": string()})
    s["Job"] = obj({
        "id": string("The key under `jobs:`; the `jobName` of sessions"),
        "name": string("Display name: `title`, else the prettified id"),
        "title": nullable(string()), "description": nullable(string()),
        "triggers": array(string(), "Signal ids that trigger the job"),
        "plannedSteps": array(ref("PlannedStep")),
    })
    signal_base: dict[str, Schema] = {
        "title": string(), "description": string(),
        "concurrency": enum(CONCURRENCY),
        "schema": {"type": "object", "description": "JSON Schema the payload must match"},
    }
    s["HttpSignal"] = obj(
        {"provider": {"const": "http"}, "concurrency": enum(CONCURRENCY),
         "config": obj({"path": string(pattern="^/")}, {"timeout": string("Sync wait limit, e.g. `90s`")})},
        signal_base,
    )
    s["ScheduleSignal"] = obj(
        {"provider": {"const": "schedule"}, "concurrency": enum(CONCURRENCY),
         "config": obj({"schedule": string("Cron expression"), "timezone": string(),
                        "onMissed": enum(["skip", "coalesce", "catchup"]), "missedWindow": string()})},
        signal_base,
    )
    s["SystemSignal"] = obj(
        {"provider": {"const": "system"}, "concurrency": enum(CONCURRENCY), "config": {"type": "object"}},
        signal_base,
        description="Only triggered by `signal` actions and the envelope body (no webhooks)",
    )
    s["SignalDefinition"] = {
        "oneOf": [ref("HttpSignal"), ref("ScheduleSignal"), ref("SystemSignal")],
        "discriminator": {"propertyName": "provider", "mapping": {
            "http": "#/components/schemas/HttpSignal", "schedule": "#/components/schemas/ScheduleSignal",
            "system": "#/components/schemas/SystemSignal"}},
    }
    s["SignalListing"] = obj({"signals": array(obj({
        "name": string("The signal id"),
        "signal": {"allOf": [obj({"id": string()}), ref("SignalDefinition")]},
        "jobs": array(string(), "Ids of the jobs it triggers"),
    }))})

    s["ToolListing"] = obj({
        "workspaceId": string(),
        "servers": array(obj({
            "id": string("The server id under tools.mcp.servers"),
            "transport": enum(["stdio", "http"]),
            "status": enum(["running", "error"], "`error` when it could not be started or reached"),
            "tools": array(obj({"name": string(), "description": string(), "inputSchema": {"type": "object"}}),
                           "The tools it offers, after its allow/deny filter (empty on error)"),
        }, {"description": string(), "error": string("Why it could not be started (never a secret)")})),
    })

    # -- memory (issue #17)
    s["MemoryEntry"] = obj(
        {"id": string(), "text": string("What was remembered (secrets redacted before it was saved)"),
         "createdAt": TIMESTAMP,
         "source": obj({}, {"sessionId": string("The run whose llm step saved it"),
                            "chatId": string("The chat whose turn saved it")})},
        {"metadata": {"type": "object", "description": "Structured data saved with the entry"}},
        description="One entry of a workspace memory corpus",
    )
    s["MemoryCorpusList"] = obj({"corpora": array(obj(
        {"name": string("The corpus name under `memory.own`"), "type": enum(["long_term", "short_term", "scratchpad"]),
         "strategy": enum(["narrative"]), "count": integer(0, "How many entries it holds")}),
        "In the file's order")})
    s["MemoryEntryList"] = obj({"entries": array(ref("MemoryEntry"), "Newest first")})

    # -- chat (issue #17)
    s["ChatRequest"] = obj({"message": string("What the user says", minLength=1)},
                           {"chatId": string("Continue this chat; absent: a new chat (its title is the message "
                                             "cut to 60 characters)")})
    s["ChatSummary"] = obj({"chatId": string(), "title": string(), "createdAt": TIMESTAMP, "updatedAt": TIMESTAMP,
                            "messageCount": integer(0)})
    s["ChatList"] = obj({"chats": array(ref("ChatSummary"), "Newest (last updated) first")})
    s["ChatToolCall"] = obj({"toolCallId": string(), "toolName": string(), "args": {}},
                            {"result": {"description": "What the tool answered (a job: its run's output)"},
                             "error": string(), "durationMs": integer(0)})
    s["ChatSessionLink"] = obj({"sessionId": string(), "correlationId": string(), "jobName": string(),
                                "status": string("The run's status when the reply last saw it")})
    s["ChatMessage"] = obj(
        {"id": string(), "role": enum(["user", "assistant"]), "text": string(), "createdAt": TIMESTAMP,
         "turnId": string(), "correlationId": string("The turn's: every run it started belongs to this tree")},
        {"toolCalls": array(ref("ChatToolCall")), "sessions": array(ref("ChatSessionLink")),
         "status": enum(["streaming", "completed", "failed", "interrupted"], "Replies only"),
         "error": string()})
    s["Chat"] = obj({"chatId": string(), "title": string(), "createdAt": TIMESTAMP, "updatedAt": TIMESTAMP,
                     "messages": array(ref("ChatMessage"), "In order")})
    s["ChatTitle"] = obj({"title": string("The new title (1–200 characters)", minLength=1)})

    # -- schedules
    s["ScheduleEntry"] = obj(
        {"workspaceId": string(), "signalId": string(), "schedule": string("Cron expression"),
         "timezone": string(), "onMissed": enum(["skip", "coalesce", "catchup"]),
         "missedWindow": string("Duration, e.g. `24h`"), "concurrency": enum(CONCURRENCY),
         "paused": {"type": "boolean"},
         "nextRun": nullable(TIMESTAMP) | {"description": "Next tick; null while paused or without a job"},
         "lastScheduled": nullable(TIMESTAMP) | {"description": "Latest slot settled (fired, skipped or missed)"}},
        {"lastResult": obj(
            {"sessionId": string(), "correlationId": string(), "scheduled": nullable(TIMESTAMP),
             "status": enum([*SESSION_STATUSES, "unknown"], "`unknown` when this daemon does not know the session")},
            description="The session of the latest fired tick"),
         "lastError": obj({"code": string(), "message": string()}, {"scheduled": TIMESTAMP},
                          description="Why the latest tick could not be accepted")},
        description="A cron schedule (a `schedule` signal, spec §5.6); pausing is cluster-wide",
    )
    s["ScheduleList"] = obj({"schedules": array(ref("ScheduleEntry"))})

    # -- triggering
    s["TriggerEnvelope"] = obj(
        {},
        {"payload": {"type": ["object", "null"], "description": "The job's input (`null` counts as `{}`)"},
         "streamId": string("Opaque client stream id, recorded with the session"),
         "parentSessionId": string("Makes the new session a child of this one (same correlationId)"),
         "skipStates": array(string(), "State ids of the job's FSM whose `entry` step actions do not run (each "
                                       "recorded `step:skipped`); their `emit` actions still run. An unknown id is "
                                       "400 `invalid_body`"),
         "bypassConcurrency": {"type": "boolean", "description": "Internal: `true` is 403 `bypass_not_allowed`"}},
        closed=True,
        description="The envelope body (spec §5.2); an empty body and `{}` are envelopes too",
    )
    s["WebhookBody"] = {
        "type": "object",
        "description": "Any JSON object with a key outside the envelope keys (`payload`, `streamId`, "
                       "`parentSessionId`, `skipStates`, `bypassConcurrency`): webhook "
                       "mode, the whole object is the payload (only for `http` signals)",
        "not": {"propertyNames": {"enum": ENVELOPE_KEYS}},
    }
    s["TriggerAccepted"] = obj(
        {"message": enum(["Signal accepted", "Webhook accepted"]), "status": {"const": "accepted"},
         "workspaceId": string(), "signalId": string(), "correlationId": string(format="uuid"),
         "sessionId": string(format="uuid")},
        closed=True,
        description="The 202 of nowait and webhook mode (spec §4.2): exactly these six keys",
    )
    s["RerunRequest"] = obj(
        {}, {"payload": {"type": ["object", "null"],
                         "description": "The input of the re-run; absent or null: the original session's payload"}},
        closed=True,
        description="The body of `POST /api/sessions/{session_id}/rerun` (empty: `{}`)",
    )
    s["TriggerCompleted"] = obj(
        {"message": {"const": "Signal completed"}, "status": {"const": "completed"},
         "workspaceId": string(), "signalId": string(), "sessionId": string(), "correlationId": string(),
         "output": {"type": "object", "description": "The session's `results` (`{}` when none)"},
         "artifactIds": {"type": "array", "items": string(), "maxItems": 0},
         "summary": string("`aiSummary.summary`, or `\"\"`")},
        description="The 200 of sync mode for a completed session (spec §5.4)",
    )

    # -- sessions
    # The session shapes (SessionView, AgentBlock, SessionSummary, the durable events and the `Event` union, and
    # what they reference) are generated from the TypedDicts the runtime builds them by (`atlas.api.wire_schemas`).
    s.update(component_schemas())
    s["SessionList"] = obj({"sessions": array(ref("SessionSummary"))},
                           {"nextCursor": string("Pass as `cursor` for the next page; absent on the last page")})
    s["SessionChildren"] = obj({"sessions": array(ref("SessionSummary"), "Direct children, oldest first")})
    s["LogLine"] = obj(
        {"ts": string("When the step wrote it (RFC 3339 UTC, milliseconds)", format="date-time"),
         "stepNumber": integer(1),
         "stream": string("`stdout`, `stderr`, `log` (python print/logging), `progress`, `tool` (an llm step's tool "
                          "calls) or `atlas` (the marker of a log cut at its bound)"),
         "text": string("One line, without its newline; `secret()` values are `***`")},
        description="One line a step wrote, kept with the run (issue #16)",
    )
    s["LogPage"] = obj(
        {"lines": array(ref("LogLine"), "In the order written"),
         "nextCursor": string("Pass as `after` for the lines that follow (also while the run still writes)"),
         "ended": {"type": "boolean",
                   "description": "The session has ended and this page reached the end of its log: nothing follows"}},
    )
    s["CancelResult"] = obj(
        {"message": string(), "sessionId": string(), "workspaceId": string(),
         "status": enum(TERMINAL_STATUSES, "The final status (`completed` if the run won the race)"),
         "cancelled": array(string(), "Descendants cancelled with `parent_cancelled`")},
    )
    s["CancelRequested"] = obj(
        {"message": string(), "sessionId": string(), "workspaceId": string(),
         "status": enum(SESSION_STATUSES, "The current status"), "cancelled": array(string()),
         "cancelRequested": {"const": True}},
        description="The session was not terminal 5 s after the cancel request",
    )

    s["TriggerStreamFrame"] = {
        "description": "The JSON of one `data:` line of SSE trigger mode, in this order: `data-session-accepted`, "
                       "`data-session-start`, `data-session-event` / `data-ephemeral` (interleaved), "
                       "`data-session-finish`, then `job-complete` or `job-error`; the stream ends with "
                       "`data: [DONE]`",
        "oneOf": [
            obj({"type": {"const": "data-session-accepted"},
                 "data": obj({"workspaceId": string(), "signalId": string(), "sessionId": string(),
                              "correlationId": string()})}),
            obj({"type": {"const": "data-session-start"}, "data": obj({"sessionId": string()})}),
            obj({"type": {"const": "data-session-event"}, "data": ref("Event")}),
            obj({"type": {"const": "data-ephemeral"}, "data": ref("EphemeralChunk")}),
            obj({"type": {"const": "data-session-finish"},
                 "data": obj({"sessionId": string(), "workspaceId": string(), "status": enum(TERMINAL_STATUSES)})}),
            obj({"type": {"const": "job-complete"},
                 "data": obj({"success": {"const": True}, "sessionId": string(), "correlationId": string(),
                              "status": {"const": "completed"}, "output": {"type": "object"},
                              "artifactIds": array(string()), "summary": string()})}),
            obj({"type": {"const": "job-error"}, "data": ref("Error")}),
        ],
    }
    s["StreamEnd"] = obj({}, {"status": enum(TERMINAL_STATUSES), "correlationId": string(),
                              "sessions": integer()},
                         description="`event: end` data: `{status}` for a session stream, "
                                     "`{correlationId, sessions}` for a tree stream")
    return s


# ---------------------------------------------------------------------------------------------- operations


def _op(op_id: str, tag: str, summary: str, description: str, responses: dict[str, Any], *,
        parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        open_route: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary, "description": description}
    if parameters:
        out["parameters"] = parameters
    if body is not None:
        out["requestBody"] = body
    out["responses"] = responses
    if open_route:
        out["security"] = []
    return out


SSE_CONTENT = {SSE: {"schema": {"type": "string", "description": "A stream of Server-Sent Events frames"}}}


def _session_stream_description(tree: bool) -> str:
    if tree:
        return (
            "Server-Sent Events of every session with this correlationId (spec §9 \"Tree stream\"): replays their "
            "durable events, then follows them, picking up children created later. Frames are `id: <SESSION_EVENTS "
            "stream sequence>` + `data: <Event JSON>` (no `event:` line; each event carries its `sessionId`), so "
            "`Last-Event-ID` resumes the whole tree; chunks are `event: ephemeral` (`EphemeralChunk`); a "
            "`: keep-alive` comment every 15 s. When every session is terminal: `event: end` "
            "`{correlationId, sessions: n}`, then the stream closes. A daemon that does not know the id yet "
            "waits up to 2 s for it."
        )
    return (
        "Server-Sent Events of one session (spec §9 \"Per-session stream\"): replays the durable events with `seq` "
        "above `Last-Event-ID` (or `?after=`), then follows. Durable events are `id: <seq>` + `data: <Event JSON>` "
        "(no `event:` line); chunks are `event: ephemeral` (`EphemeralChunk`); a `: keep-alive` comment every 15 s. "
        "After `session:complete` it sends `event: end` `{status}` and closes: clients must not reconnect. Works "
        "for queued, active and finished sessions."
    )


def _resume_params(what: str) -> list[dict[str, Any]]:
    digits = string(pattern="^[0-9]{1,19}$")
    return [
        query_param("after", f"Replay only frames after this {what}; a bad value is 400 `invalid_query`",
                    {"type": "integer", "minimum": 0, "maximum": 10**19 - 1}),
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": digits,
         "description": f"What an EventSource sends on reconnect: like `after` (and wins over it), a {what}"},
    ]


def _paths() -> dict[str, Any]:
    p: dict[str, Any] = {}
    p["/health"] = {"get": _op(
        "getHealth", "daemon", "Liveness and readiness",
        "Open without a token. `status` is `starting` until the first recovery pass is done, and `degraded` while "
        "the bus cannot take writes.",
        {"200": response("The daemon is up", ref("Health")), **errors(method="get", open_route=True)},
        open_route=True,
    )}
    p["/metrics"] = {"get": _op(
        "getMetrics", "daemon", "Prometheus metrics",
        "This daemon's metrics in the Prometheus text format (OpenMetrics when `Accept` asks for it), issue #18: "
        "triggers, sessions (ended; queued and active as its read model holds them), accept, queue, session and "
        "step latencies, model and tool calls, bus errors and reconnects, read-model write lag. Needs the token "
        "when one is configured; any foreign `Origin` is refused. In a cluster scrape every daemon.",
        {"200": {"description": "The metrics", "content": {"text/plain": {"schema": string()}}},
         **errors(method="post")},
    )}
    p["/api/daemon/status"] = {"get": _op(
        "getDaemonStatus", "daemon", "Daemon and cluster status", "Process, bus, session and cluster facts.",
        {"200": response("Status", ref("DaemonStatus")), **errors(method="get")},
    )}
    p["/api/daemon/shutdown"] = {"post": _op(
        "shutdownDaemon", "daemon", "Shut the daemon down",
        "Like SIGTERM (spec §8.4): stops accepting (new triggers get 503 `shutting_down`), waits up to "
        "`ATLAS_SHUTDOWN_GRACE` for running sessions, ends the rest `interrupted`, then exits.",
        {"200": response("Shutdown initiated", {**ref("Message")},
                         example={"message": "Daemon shutdown initiated"}),
         **errors(method="post", codes=["forbidden"])},
    )}

    p["/api/admin/rebuild-readmodel"] = {"post": _op(
        "rebuildReadModel", "admin", "Rebuild the read model from the log",
        "Replays the whole SESSION_EVENTS stream and writes every session's row folded from its events, guarded "
        "by `last_seq`: missing rows come back, rows behind the log move forward, right rows stay untouched. "
        "Idempotent (a second run writes 0 rows). For an empty or damaged read model and for a move from SQLite "
        "to PostgreSQL (`ATLAS_DATABASE_URL`). Answers once the replay is written.",
        {"200": response("Rebuilt", ref("RebuildResult"),
                         example={"events": 1200, "sessions": 300, "written": 300, "partial": 0,
                                  "readModel": "postgresql"}),
         **errors(method="post", codes=["bus_unavailable", "read_model_unavailable"])},
    )}

    p["/api/workspaces"] = {"get": _op(
        "listWorkspaces", "workspaces", "List workspaces", "All registered workspaces, by name.",
        {"200": response("Workspaces", array(ref("WorkspaceEntry"))), **errors(method="get")},
    )}
    p["/api/workspaces/add"] = {"post": _op(
        "addWorkspace", "workspaces", "Register (or reload) a workspace",
        "Loads the `workspace.yml` at `path` (a directory, or the file itself when it is named `workspace.yml` or "
        "`workspace.yaml`; with `ATLAS_WORKSPACE_ROOTS` set, only from under one of those directories). 201 for a "
        "new workspace, 200 when the same path was registered "
        "already (its config is reloaded). The body is read as JSON whatever its `Content-Type`.",
        {"200": response("Existing workspace reloaded", ref("WorkspaceAdded")),
         "201": response("Workspace registered", ref("WorkspaceAdded")),
         **errors(method="post", reads_body=True, codes=[
             "invalid_json", "invalid_body", "path_not_found", "not_a_workspace", "path_not_allowed",
             "workspace_exists", "workspace_invalid"
         ])},
        body={"required": True, "content": json_content(ref("AddWorkspaceRequest"),
                                                        {"path": "/home/me/workspaces/demo"})},
    )}
    p["/api/workspaces/{workspace_id}"] = {
        "parameters": [WORKSPACE_ID],
        "get": _op(
            "getWorkspace", "workspaces", "Show a workspace", "The list entry plus the normalised config.",
            {"200": response("Workspace", ref("WorkspaceDetail")),
             **errors(method="get", codes=["workspace_not_found"])},
        ),
        "delete": _op(
            "removeWorkspace", "workspaces", "Unregister a workspace",
            "Forgets the workspace; its files are untouched. With active sessions it answers 409 `workspace_busy` "
            "unless `force` is true, which cancels them (`workspace_removed`).",
            {"200": response("Removed", ref("WorkspaceRemoved")),
             **errors(method="delete", codes=["workspace_not_found", "workspace_busy"])},
            parameters=[query_param(
                "force", "`true`, `1` or `yes` (any case) cancels active sessions; any other value counts as false",
                string(pattern=BOOL_QUERY_PATTERN), "true")],
        ),
    }
    p["/api/workspaces/{workspace_id}/jobs"] = {"parameters": [WORKSPACE_ID], "get": _op(
        "listJobs", "workspaces", "List a workspace's jobs", "Jobs in file order, with their planned steps.",
        {"200": response("Jobs", array(ref("Job"))), **errors(method="get", codes=["workspace_not_found"])},
    )}
    p["/api/workspaces/{workspace_id}/signals"] = {"parameters": [WORKSPACE_ID], "get": _op(
        "listSignals", "workspaces", "List a workspace's signals", "Signals in file order, with the jobs they "
        "trigger.",
        {"200": response("Signals", ref("SignalListing")),
         **errors(method="get", codes=["workspace_not_found"])},
    )}
    p["/api/workspaces/{workspace_id}/tools"] = {"parameters": [WORKSPACE_ID], "get": _op(
        "listTools", "workspaces", "List a workspace's MCP servers and tools", "The servers of `tools.mcp`, each with "
        "its status and the tools it offers; servers not running yet are started (they are pooled per workspace).",
        {"200": response("Tools", ref("ToolListing")), **errors(method="get", codes=["workspace_not_found"])},
    )}
    corpus = path_param("corpus", "Memory corpus name (a `memory.own` entry's `name`)", "notes")
    p["/api/workspaces/{workspace_id}/memory"] = {"parameters": [WORKSPACE_ID], "get": _op(
        "listMemory", "memory", "List a workspace's memory corpora", "The corpora of `memory.own`, in file order, "
        "each with how many entries it holds.",
        {"200": response("Corpora", ref("MemoryCorpusList")),
         **errors(method="get", codes=["workspace_not_found", "bus_unavailable"])},
    )}
    p["/api/workspaces/{workspace_id}/memory/{corpus}"] = {"parameters": [WORKSPACE_ID, corpus], "get": _op(
        "listMemoryEntries", "memory", "List the entries of a memory corpus", "Newest first. `query` keeps the "
        "entries whose text contains it (case-insensitive); `limit` (1–1000, default 100) caps them.",
        {"200": response("Entries", ref("MemoryEntryList")),
         **errors(method="get", codes=["invalid_query", "workspace_not_found", "memory_not_found",
                                       "bus_unavailable"])},
        parameters=[query_param("query", "Case-insensitive substring of the text", string(), "db-7"),
                    query_param("limit", "At most this many entries (1–1000; a bad value is 400 `invalid_query`)",
                                integer(1), 20)],
    )}
    p["/api/workspaces/{workspace_id}/memory/{corpus}/{entry_id}"] = {
        "parameters": [WORKSPACE_ID, corpus, path_param("entry_id", "Memory entry id", "0b8f6c1d-2a51-4f43-9a51-"
                                                                                      "7f0c8d7e2aa1")],
        "delete": _op("deleteMemoryEntry", "memory", "Delete a memory entry", "Removes the entry for good, on "
                      "every daemon of the cluster.",
                      {"204": response("Deleted"),
                       **errors(method="delete", codes=["workspace_not_found", "memory_not_found",
                                                        "memory_entry_not_found", "bus_unavailable"])}),
    }
    chat_id = path_param("chat_id", "Chat id", "3f0c6c1e-5b1d-4f43-9a51-7f0c8d7e2aa1")
    p["/api/workspaces/{workspace_id}/chat"] = {
        "parameters": [WORKSPACE_ID],
        "post": _op(
            "chat", "chat", "Send a chat message and stream the reply",
            "Starts a turn in a new chat, or in `chatId`, and streams the reply as Server-Sent Events with named "
            "events: `chat` `{chatId, turnId, correlationId, title}` first; then `text-delta` `{delta}`, "
            "`tool-call` `{toolCallId, toolName, args}`, `tool-result` `{toolCallId, toolName, result, error?, "
            "durationMs}` and `session` `{toolCallId, sessionId, correlationId, jobName, status}` (a job the turn "
            "started: when it starts, and again when it ends or the wait bound `ATLAS_CHAT_JOB_WAIT` passes); "
            "`done` `{messageId, status, error?}` last, then the stream closes. The reply is recorded as it "
            "streams: closing the stream does not stop it (`GET …/chat/{chat_id}/stream` resumes it, on any "
            "daemon). An `Idempotency-Key` makes a retried turn the same turn: its jobs are not run twice.",
            {"200": {"description": "The reply, as Server-Sent Events", "content": SSE_CONTENT},
             **errors(method="post", reads_body=True, codes=[
                 "invalid_json", "invalid_body", "invalid_idempotency_key", "workspace_not_found", "chat_not_found",
                 "chat_busy", "chat_unavailable", "shutting_down", "bus_unavailable"])},
            parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "A retry with the same key continues the same turn (1–255 printable "
                                        "ASCII characters)", "schema": string()}],
            body={"required": True, "content": json_content(ref("ChatRequest"), {"message": "Reindex the notes"})},
        ),
        "get": _op(
            "listChats", "chat", "List a workspace's chats",
            "Newest first, from the chats' index (no record is read).",
            {"200": response("Chats", ref("ChatList")),
             **errors(method="get", codes=["workspace_not_found", "bus_unavailable"])},
        ),
    }
    p["/api/workspaces/{workspace_id}/chat/{chat_id}"] = {
        "parameters": [WORKSPACE_ID, chat_id],
        "get": _op("getChat", "chat", "Read a chat", "Its messages in order; a reply still being written is "
                   "`streaming`, one its daemon died during is `interrupted`.",
                   {"200": response("Chat", ref("Chat")),
                    **errors(method="get", codes=["workspace_not_found", "chat_not_found", "bus_unavailable"])}),
        "delete": _op("deleteChat", "chat", "Delete a chat", "Its records and its summary; a reply this daemon is "
                      "writing is stopped.",
                      {"204": response("Deleted"),
                       **errors(method="delete", codes=["workspace_not_found", "chat_not_found", "bus_unavailable"])}),
    }
    p["/api/workspaces/{workspace_id}/chat/{chat_id}/stream"] = {"parameters": [WORKSPACE_ID, chat_id], "get": _op(
        "chatStream", "chat", "Follow a chat's reply in progress",
        "The reply being written, from its start, then live: the same events as the POST, ending with `done`. With "
        "no reply in progress: the last reply's `done` alone (nothing for a chat without replies), then it closes.",
        {"200": {"description": "Server-Sent Events", "content": SSE_CONTENT},
         **errors(method="get", codes=["workspace_not_found", "chat_not_found", "bus_unavailable"])},
    )}
    p["/api/workspaces/{workspace_id}/chat/{chat_id}/title"] = {"parameters": [WORKSPACE_ID, chat_id], "patch": _op(
        "setChatTitle", "chat", "Rename a chat", "Whitespace is collapsed; answers the chat's summary.",
        {"200": response("The chat's summary", ref("ChatSummary")),
         **errors(method="patch", reads_body=True, codes=["invalid_json", "invalid_body", "workspace_not_found",
                                                          "chat_not_found", "bus_unavailable"])},
        body={"required": True, "content": json_content(ref("ChatTitle"), {"title": "Reindexing"})},
    )}
    p["/api/workspaces/{workspace_id}/signals/{signal_id}"] = {
        "parameters": [WORKSPACE_ID, SIGNAL_ID],
        "post": _trigger_operation(),
    }

    p["/api/schedules"] = {"get": _op(
        "listSchedules", "schedules", "List cron schedules", "Every `schedule` signal of every workspace, with its "
        "next fire time and the result of its latest tick.",
        {"200": response("Schedules", ref("ScheduleList")), **errors(method="get")},
    )}
    for action, verb, what in (("pause", "Pause", "No tick fires until it is resumed, on any daemon of the cluster"),
                               ("resume", "Resume", "Slots that passed while paused are not made up")):
        p[f"/api/schedules/{{workspace_id}}/{{signal_id}}/{action}"] = {
            "parameters": [WORKSPACE_ID, SIGNAL_ID],
            "post": _op(
                f"{action}Schedule", "schedules", f"{verb} a cron schedule", f"{what}. Idempotent.",
                {"200": response("The schedule after the change", ref("ScheduleEntry")),
                 **errors(method="post", codes=["schedule_not_found"])},
            ),
        }

    p["/api/sessions"] = {"get": _op(
        "listSessions", "sessions", "List sessions",
        "Newest first by (`startedAt`, `sessionId`); filters combine with AND, unknown values match nothing "
        "(`200 {\"sessions\": []}`); an unknown query parameter is ignored, a known one with a bad value is 400 "
        "`invalid_query`. An unknown "
        "correlationId is an empty list, never a placeholder (spec §4.3, §7.2).",
        {"200": response("One page of sessions", ref("SessionList")),
         **errors(method="get", codes=["invalid_query", "read_model_unavailable"])},
        parameters=[
            query_param("workspaceId", "Exact match", string()),
            query_param("correlationId", "Exact match: a whole trigger tree", string()),
            query_param("jobName", "Exact match on the job id", string()),
            query_param("signalId", "Exact match", string()),
            query_param("parentSessionId", "Exact match: direct children of a session", string()),
            query_param("rootSessionId", "Exact match: every descendant of a root, and the root", string()),
            query_param("sessionIdPrefix", "Sessions whose id starts with this (how short ids are resolved: ask "
                        "with `limit=2`, one answer is the session)", string(pattern="^[A-Za-z0-9_-]{1,64}$")),
            query_param("status", "Comma-separated statuses; an unknown status is 400 `invalid_query`",
                        string(pattern=STATUS_LIST_PATTERN), "completed,failed"),
            query_param("since", "Inclusive lower bound on `startedAt` (RFC 3339)", string(format="date-time")),
            query_param("until", "Exclusive upper bound on `startedAt` (RFC 3339)", string(format="date-time")),
            query_param("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
            query_param("cursor", "The opaque `nextCursor` of the previous page; a bad one is 400 `invalid_query`",
                        string()),
        ],
    )}
    p["/api/sessions/stream"] = {"get": _op(
        "streamCorrelation", "sessions", "Stream a whole trigger tree (SSE)", _session_stream_description(True),
        {"200": {"description": "The event stream", "content": SSE_CONTENT},
         **errors(method="get", codes=["invalid_query", "correlation_not_found"])},
        parameters=[
            {"name": "correlationId", "in": "query", "required": True, "description": "The tree's correlationId",
             "schema": string(minLength=1)},
            *_resume_params("SESSION_EVENTS stream sequence"),
        ],
    )}
    p["/api/sessions/{session_id}"] = {
        "parameters": [SESSION_ID],
        "get": _op(
            "getSession", "sessions", "Show a session",
            "The SessionView. Works on every daemon of a cluster: one that has not seen the session yet "
            "rebuilds it from the bus.",
            {"200": response("The session", ref("SessionView")),
             **errors(method="get", codes=["session_not_found", "read_model_unavailable"])},
        ),
        "delete": _op(
            "cancelSession", "sessions", "Cancel a session and its descendants",
            "Queued sessions end at once; active ones are cancelled by their runner (spec §8.3). Non-terminal "
            "descendants are cancelled with `parent_cancelled`. Waits up to 5 s for the session to end.",
            {"200": response("The session ended", ref("CancelResult")),
             "202": response("Cancellation requested; the session had not ended after 5 s",
                             ref("CancelRequested")),
             **errors(method="delete", codes=["session_not_found", "session_not_active"])},
        ),
    }
    p["/api/sessions/{session_id}/children"] = {"parameters": [SESSION_ID], "get": _op(
        "listChildren", "sessions", "Direct children of a session", "By `queuedAt` ascending.",
        {"200": response("Children", ref("SessionChildren")),
         **errors(method="get", codes=["session_not_found"])},
    )}
    p["/api/sessions/{session_id}/logs"] = {"parameters": [SESSION_ID], "get": _op(
        "getSessionLogs", "sessions", "What a session's steps wrote",
        "The step log kept with the run (issue #16): shell stdout and stderr, python `emit_log`/print/logging, "
        "progress messages, an http step's request lines and an llm step's tool calls, line by line with the step "
        "number and stream; at most 10,000 lines or 1 MiB per step, then one `atlas` marker line; kept as long as "
        "the session. Paged by `after` (the `nextCursor` of the previous page). With `follow=true`: Server-Sent "
        "Events, `id: <cursor>` + `event: logs` + `data: {lines, nextCursor}` (`Last-Event-ID` resumes), a "
        "`: keep-alive` comment every 15 s, and `event: end` `{status}` once the session has ended and every line "
        "was sent.",
        {"200": {"description": "One page of lines (or, with `follow=true`, the event stream)",
                 "content": {**json_content(ref("LogPage")), SSE: {"schema": {
                     "type": "object", "required": ["event", "data"],
                     "description": "One Server-Sent Event: `logs` (data: `{lines, nextCursor}`, id: the cursor) "
                                    "or `end` (data: `{status}`)",
                     "properties": {"event": enum(["logs", "end"]), "data": string("The frame's JSON"),
                                    "id": string()}}}}},
         **errors(method="get", codes=["invalid_query", "session_not_found", "bus_unavailable"])},
        parameters=[
            query_param("after", "The `nextCursor` of a previous page; a bad one is 400 `invalid_query`",
                        string(pattern="^[0-9]{1,19}\\.[0-9]{1,9}$")),
            query_param("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}),
            query_param("follow", "Stream the log as SSE until the session ends", enum(["true", "false"])),
        ],
    )}
    p["/api/sessions/{session_id}/rerun"] = {"parameters": [SESSION_ID], "post": _op(
        "rerunSession", "sessions", "Re-run a finished session",
        "Triggers the finished session's signal again (issue #16), as a nowait trigger does: 202 with a new "
        "sessionId and correlationId, whose SessionView and SessionSummary carry `trigger: rerun` and `rerunOf: "
        "<this sessionId>`. The payload is the original one unless the body gives another; it is checked against "
        "the signal's schema as it is now (400 `payload_invalid`). A queued or active session is 409 "
        "`session_not_finished`; a workspace or signal removed since is 404. The body is read as JSON whatever its "
        "`Content-Type`; an empty body is `{}`.",
        {"202": response("Accepted, durable and visible at once (read-your-writes)", ref("TriggerAccepted"),
                         headers={"Location": header("`/api/sessions/<sessionId>` of the new run",
                                                     string(pattern="^/api/sessions/"), required=True)}),
         **errors(method="post", reads_body=True, codes=[
             "invalid_json", "invalid_body", "payload_invalid", "payload_too_complex", "session_not_found",
             "workspace_not_found", "signal_not_found", "no_job_for_signal", "session_not_finished",
             "agent_unavailable", "bus_unavailable", "read_model_unavailable", "shutting_down",
         ])},
        body={"required": False, "content": json_content(ref("RerunRequest"), {"payload": {"n": 2}})},
    )}
    p["/api/sessions/{session_id}/stream"] = {"parameters": [SESSION_ID], "get": _op(
        "streamSession", "sessions", "Stream a session (SSE)", _session_stream_description(False),
        {"200": {"description": "The event stream", "content": SSE_CONTENT},
         **errors(method="get", codes=["invalid_query", "session_not_found", "bus_unavailable"])},
        parameters=_resume_params("`seq`"),
    )}
    p["/openapi.json"] = {"get": _op(
        "getOpenApi", "meta", "This document", "The OpenAPI 3.1 description of the API.",
        {"200": response("The document", {"type": "object", "required": ["openapi", "info", "paths"]}),
         **errors(method="get")},
    )}
    return p


def _trigger_operation() -> dict[str, Any]:
    description = (
        "Triggers the job that handles the signal (spec §5). The mode, in precedence order:\n\n"
        "1. **webhook**: the body is webhook-shaped (a JSON object with a key outside the envelope keys, or a "
        "non-JSON `Content-Type` such as form, text or XML, whose payload is `null`): 202 `Webhook accepted`. "
        "Only `http` signals take webhooks, and never with `Accept: text/event-stream` (400 `envelope_required`).\n"
        "2. **SSE**: `Accept` contains `text/event-stream`: 200 `text/event-stream` (see `TriggerStreamFrame`).\n"
        "3. **nowait**: `nowait` is `true`, `1` or `yes`: 202 (`TriggerAccepted`, `Location: /api/sessions/<id>`).\n"
        "4. **sync** (`nowait` absent, `false`, `0` or `no`): waits for the end; 200 `TriggerCompleted`, or the "
        "409/422 of a session that did not complete, or 504 `wait_timeout` past the signal's `config.timeout` "
        "(else the job timeout + 60 s). A sync or SSE client that disconnects cancels the session "
        "(`client_disconnected`).\n\n"
        "Every check runs before anything is created, in the order of spec §5.3; a rejected request creates no "
        "session and does not reserve its `Idempotency-Key`. A replayed key answers as the original request did, "
        "with `Idempotent-Replayed: true`, and creates nothing."
    )
    replayed = header("`true` when the answer replays an earlier request with the same `Idempotency-Key`",
                      enum(["true"]))
    sync_or_sse = {
        **json_content(ref("TriggerCompleted")),
        **SSE_CONTENT,
    }
    responses: dict[str, Any] = {
        "200": {"description": "Sync mode: the session completed (JSON); SSE mode: the event stream",
                "headers": {"Idempotent-Replayed": replayed}, "content": sync_or_sse},
        "202": response("nowait or webhook mode: accepted, durable and visible at once (read-your-writes)",
                        ref("TriggerAccepted"),
                        headers={"Location": header("`/api/sessions/<sessionId>`", string(pattern="^/api/sessions/"),
                                                    required=True),
                                 "Idempotent-Replayed": replayed}),
        **errors(method="post", reads_body=True, codes=[
            "invalid_json", "invalid_body", "invalid_query", "envelope_required", "payload_invalid",
            "payload_too_complex", "invalid_idempotency_key", "workspace_not_found", "signal_not_found",
            "no_job_for_signal", "skipped-duplicate", "idempotency_key_in_progress", "cascade_limit_exceeded",
            "workspace_invalid", "unknown_parent_session", "idempotency_key_mismatch", "session_failed",
            "session_cancelled", "session_skipped", "bus_unavailable", "shutting_down", "wait_timeout",
            "agent_unavailable", "bypass_not_allowed"
        ]),
    }
    body = {
        "required": False,
        "description": "The envelope, any other JSON object (webhook), or a non-JSON webhook body. An empty body is "
                       "the envelope `{}`.",
        "content": {
            JSON: {"schema": {"oneOf": [ref("TriggerEnvelope"), ref("WebhookBody")]},
                   "examples": {"envelope": {"value": {"payload": {"count": 3, "interval": 0.5}}},
                                "webhook": {"value": {"event": "push", "ref": "main"}}}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object",
                                                             "additionalProperties": string()}},
            "text/plain": {"schema": string()},
        },
    }
    return _op(
        "triggerSignal", "signals", "Trigger a signal", description, responses,
        parameters=[
            query_param("nowait", "`true`, `1` or `yes` (any case): answer 202 at once; absent, `false`, `0` or "
                                  "`no`: wait for the end (sync). Anything else is 400 `invalid_query`.",
                        string(pattern=BOOL_QUERY_PATTERN), "true"),
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "1–255 printable ASCII characters; scope (workspace, signal, key) for "
                            "`ATLAS_IDEMPOTENCY_TTL` (24 h). The same key with another body is 422 "
                            "`idempotency_key_mismatch`.",
             "schema": string(pattern="^[\\x20-\\x7E]{1,255}$", minLength=1, maxLength=255)},
            {"name": "X-Atlas-Client", "in": "header", "required": False,
             "description": "Who triggers: `ui` (the web UI) or `cli` (the `atlas` CLI) is recorded as the session's "
                            "`trigger`; any other value (or none) records `http` (a webhook body: `webhook`).",
             "schema": string(pattern="^[\\x21-\\x7E]{1,32}$", examples=["ui", "cli"])},
        ],
        body=body,
    )


# ---------------------------------------------------------------------------------------------- document


def build_openapi() -> dict[str, Any]:
    """The whole document (a new object on each call)."""
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "atlasd",
            "version": __version__,
            "summary": "The atlas daemon: workspaces, signals, FSM jobs and event-sourced sessions",
            "description": (
                "All bodies are UTF-8 JSON. Every error is `{\"error\": {\"code\", \"message\", \"details\"?}}`, "
                "including 404 `not_found` for unknown routes and 405 `method_not_allowed` for wrong methods. "
                "When `ATLAS_TOKEN` is set, every route but `GET /health` needs `Authorization: Bearer <token>`. "
                "Requests must carry an allowed `Host`, and state-changing requests from a foreign `Origin` are "
                "refused (spec §10). CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) "
                "are answered before any route: 204 for an origin in `ATLAS_CORS_ORIGINS`, else 403 "
                "`forbidden_origin`. Other `GET` paths outside `/api` serve the web UI, which is not described here."
            ),
        },
        "tags": [
            {"name": "daemon", "description": "Health, status and shutdown"},
            {"name": "admin", "description": "Operator actions"},
            {"name": "workspaces", "description": "Registered workspaces, their jobs and signals"},
            {"name": "signals", "description": "Triggering jobs (spec §5)"},
            {"name": "sessions", "description": "Session queries, cancellation and live streams"},
            {"name": "schedules", "description": "Cron schedules (spec §5.6)"},
            {"name": "memory", "description": "Workspace memory corpora and their entries (issue #17)"},
            {"name": "chat", "description": "Workspace chats: a turn's reply streamed, chats listed and read (#17)"},
            {"name": "meta", "description": "This document"},
        ],
        "security": [{}, {"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "`ATLAS_TOKEN`; only required when the daemon has one"},
            },
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    """The document as served: built and encoded once, on first request (it cannot change while a daemon runs)."""
    return json.dumps(build_openapi(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def openapi_json(_: Request) -> Response:
    """`GET /openapi.json`."""
    return Response(_document_bytes(), media_type=JSON)
