"""The records of a chat and the pure fold that turns them into its messages (issue #17).

A chat is an append-only log (`atlas.bus.chatlog`); each record is one of:

- `user` `{id, text, createdAt, turnId, correlationId}`: the message that starts a turn;
- `start` `{messageId, turnId, correlationId, createdAt}`: the assistant's reply begins;
- `text-delta` `{messageId, delta}`: reply text (deltas coalesced while a write is in flight);
- `tool-call` `{messageId, toolCallId, toolName, args}` and `tool-result` `{…, result, error?, durationMs}`;
- `session` `{messageId, toolCallId, sessionId, correlationId, jobName, status}`: a job session the turn started;
- `done` `{messageId, status, error?}`: the reply ended (`completed`, `failed` or `interrupted`).

History as data: `messages(records)` folds them, and the SSE events of a turn are its records renamed
(`sse_event`), so a stream replayed from the log and one followed live are the same stream. The wire shapes of
the API (contract of #17) are built here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Any

from atlas.errors import AtlasError

__all__ = ["TITLE_CHARS", "check_chat_id", "messages", "sse_event", "summary_out", "title_of"]

#: A new chat's title is its first message cut to this many characters (no model call).
TITLE_CHARS = 60
_CHAT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DONE_STATUSES = frozenset({"completed", "failed", "interrupted"})


def check_chat_id(chat_id: str) -> str:
    """A chat id becomes a subject token and a KV key: anything that could widen them is an unknown chat."""
    if not _CHAT_ID.match(chat_id):
        raise AtlasError("chat_not_found", f"Chat '{chat_id[:80]}' not found")
    return chat_id


def title_of(message: str) -> str:
    """The first message on one line, cut to `TITLE_CHARS`."""
    return " ".join(message.split())[:TITLE_CHARS] or "New chat"


def user(*, id: str, text: str, created_at: str, turn_id: str, correlation_id: str) -> dict[str, Any]:
    return {"type": "user", "id": id, "text": text, "createdAt": created_at, "turnId": turn_id,
            "correlationId": correlation_id}


def start(*, message_id: str, turn_id: str, correlation_id: str, created_at: str) -> dict[str, Any]:
    return {"type": "start", "messageId": message_id, "turnId": turn_id, "correlationId": correlation_id,
            "createdAt": created_at}


def done(message_id: str, status: str, error: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "done", "messageId": message_id, "status": status}
    if error:
        record["error"] = error
    return record


def messages(records: list[dict[str, Any]], active_message: str | None) -> list[dict[str, Any]]:
    """The chat's messages. A reply without `done` is `streaming` when it is the turn in progress
    (`active_message`), else `interrupted`: its daemon died before it could say so."""
    out: list[dict[str, Any]] = []
    replies: dict[str, dict[str, Any]] = {}
    for record in records:
        kind = record.get("type")
        if kind == "user":
            out.append({k: record[k] for k in ("id", "text", "createdAt", "turnId", "correlationId")}
                       | {"role": "user"})
            continue
        if kind == "start":
            reply = {"id": record["messageId"], "role": "assistant", "text": "", "createdAt": record["createdAt"],
                     "turnId": record["turnId"], "correlationId": record["correlationId"], "status": "streaming"}
            replies[record["messageId"]] = reply
            out.append(reply)
            continue
        reply_or_none = replies.get(str(record.get("messageId")))
        if reply_or_none is None:
            continue
        reply = reply_or_none
        if kind == "text-delta":
            reply["text"] += str(record.get("delta", ""))
        elif kind == "tool-call":
            reply.setdefault("toolCalls", []).append(
                {"toolCallId": record["toolCallId"], "toolName": record["toolName"], "args": record.get("args")})
        elif kind == "tool-result":
            for call in reply.get("toolCalls", []):
                if call["toolCallId"] == record["toolCallId"]:
                    call["result"] = record.get("result")
                    call["durationMs"] = record.get("durationMs", 0)
                    if record.get("error"):
                        call["error"] = record["error"]
        elif kind == "session":
            link = {k: record.get(k) for k in ("sessionId", "correlationId", "jobName", "status")}
            sessions = reply.setdefault("sessions", [])
            for i, known in enumerate(sessions):
                if known["sessionId"] == link["sessionId"]:
                    sessions[i] = link
                    break
            else:
                sessions.append(link)
        elif kind == "done" and reply["status"] == "streaming":  # the first `done` of a reply counts
            reply["status"] = record.get("status", "completed")
            if record.get("error"):
                reply["error"] = record["error"]
    for reply in replies.values():
        if reply["status"] == "streaming" and reply["id"] != active_message:
            reply["status"] = "interrupted"
            reply.setdefault("error", "The daemon running this reply stopped before it ended")
    return out


def sse_event(record: dict[str, Any], *, chat_id: str, title: str) -> tuple[str, dict[str, Any]] | None:
    """The SSE event (name, data) of a record of a turn; None for a record no event shows (`user`)."""
    kind = record.get("type")
    if kind == "start":
        return "chat", {"chatId": chat_id, "turnId": record["turnId"], "correlationId": record["correlationId"],
                        "title": title}
    if kind == "done":
        return "done", {k: v for k, v in record.items() if k != "type"}
    if kind in ("text-delta", "tool-call", "tool-result", "session"):
        return str(kind), {k: v for k, v in record.items() if k not in ("type", "messageId")}
    return None


def summary_out(chat_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The API's chat summary `{chatId, title, createdAt, updatedAt, messageCount}` from the index value."""
    return {"chatId": chat_id, "title": summary.get("title", ""), "createdAt": summary.get("createdAt", ""),
            "updatedAt": summary.get("updatedAt", ""), "messageCount": int(summary.get("messageCount", 0))}
