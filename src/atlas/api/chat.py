"""Chat routes (issue #17): `POST /api/workspaces/{ws}/chat` streams a turn's reply; list, read, follow, retitle and
delete chats. The chat itself is the runtime's (`atlas.chat.service.ChatService`, `daemon.chat`); these routes
check the request, call it and frame the answer.

The reply stream is Server-Sent Events with named events (`event: text-delta` / `data: {…}`), each the renamed
record of the turn (`atlas.chat.records.sse_event`): `chat` first, `done` last, then the stream closes. The POST
and `GET …/stream` send the same stream, both read from the chat's log, so a client that reconnects (to any daemon)
gets the turn from its start. Closing the stream does not stop the reply: the turn runs on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from atlas.api.body import parse_json
from atlas.api.responses import json_response, read_body
from atlas.api.state import daemon_of
from atlas.api.streams import KEEPALIVE_FRAME, OPEN_FRAME, SSE_HEADERS
from atlas.chat.service import ChatService, StartedTurn
from atlas.errors import AtlasError

#: A chat message is at most this many characters (a bigger one is refused before anything is written).
MAX_MESSAGE_CHARS = 100_000
MAX_TITLE_CHARS = 200


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


async def _turn_stream(chat: ChatService, turn: StartedTurn) -> AsyncIterator[bytes]:
    yield OPEN_FRAME
    async for event in chat.follow(turn):
        yield KEEPALIVE_FRAME if event is None else _frame(*event)


def _sse(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=dict(SSE_HEADERS))


async def _object_body(request: Request, allowed: set[str]) -> dict[str, Any]:
    raw = await read_body(request, daemon_of(request).settings.max_body)
    data = parse_json(raw) if raw.strip() else None
    if not isinstance(data, dict):
        raise AtlasError("invalid_body", "The body must be a JSON object")
    extra = sorted(set(data) - allowed)
    if extra:
        raise AtlasError("invalid_body", "Unknown field(s): " + ", ".join(extra),
                         [{"path": key, "message": "unknown field"} for key in extra])
    return data


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AtlasError("invalid_body", f"`{key}` must be a non-empty string",
                         [{"path": key, "message": "expected a non-empty string"}])
    if len(value) > limit:
        raise AtlasError("invalid_body", f"`{key}` is longer than {limit} characters",
                         [{"path": key, "message": f"at most {limit} characters"}])
    return value


async def post_chat(request: Request) -> Response:
    """`POST /api/workspaces/{workspace_id}/chat` `{message, chatId?}` → the reply as SSE."""
    chat = daemon_of(request).chat
    ws_id: str = request.path_params["workspace_id"]
    chat.workspace(ws_id)  # 404 before the body is read
    data = await _object_body(request, {"message", "chatId"})
    message = _text(data, "message", MAX_MESSAGE_CHARS)
    chat_id = data.get("chatId")
    if chat_id is not None and not isinstance(chat_id, str):
        raise AtlasError("invalid_body", "`chatId` must be a string",
                         [{"path": "chatId", "message": "expected a string"}])
    turn = await chat.start_turn(ws_id, message, chat_id, request.headers.get("idempotency-key"))
    return _sse(_turn_stream(chat, turn))


async def list_chats(request: Request) -> Response:
    chats = await daemon_of(request).chat.list_chats(request.path_params["workspace_id"])
    return json_response({"chats": chats})


async def get_chat(request: Request) -> Response:
    body = await daemon_of(request).chat.get_chat(request.path_params["workspace_id"], request.path_params["chat_id"])
    return json_response(body)


async def chat_stream(request: Request) -> Response:
    """`GET …/chat/{chat_id}/stream`: the turn in progress from its start, then live; with none, the last reply's
    `done` alone."""
    chat = daemon_of(request).chat
    turn, done = await chat.turn_in_progress(request.path_params["workspace_id"], request.path_params["chat_id"])

    async def finished() -> AsyncIterator[bytes]:
        yield OPEN_FRAME
        if done is not None:
            yield _frame("done", done)

    return _sse(_turn_stream(chat, turn) if turn is not None else finished())


async def delete_chat(request: Request) -> Response:
    await daemon_of(request).chat.delete_chat(request.path_params["workspace_id"], request.path_params["chat_id"])
    return Response(status_code=204)


async def patch_title(request: Request) -> Response:
    chat = daemon_of(request).chat
    ws_id, chat_id = request.path_params["workspace_id"], request.path_params["chat_id"]
    chat.workspace(ws_id)
    data = await _object_body(request, {"title"})
    title = " ".join(_text(data, "title", MAX_TITLE_CHARS).split())
    return json_response(await chat.set_title(ws_id, chat_id, title))


__all__ = ["chat_stream", "delete_chat", "get_chat", "list_chats", "patch_title", "post_chat"]
