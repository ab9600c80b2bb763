"""Chats on the bus (issue #17): each chat's records in the `CHATS` stream, and its summary in KV `CHAT_INDEX`.

Why a stream per record rather than a document per chat: a reply is recorded *as it streams* (text in coalesced
pieces, tool calls, results, sessions, then `done`), so any daemon can replay a turn in progress from its first
record and then follow it live with one ordered consumer; a document rewritten on every delta could do neither.
Why an index beside it: listing a workspace's chats must not read every record of every chat, so each chat keeps
one small summary (title, times, message count, the turn in progress and which daemon process runs it), updated
with compare-and-set so that two requests never both start a turn in one chat.

Subjects are `chats.<workspaceId>.<chatId>`, index keys `<workspaceId>.<chatId>`: both ids are checked tokens
(a workspace id is a slug; a chat id is checked by `atlas.chat.records.check_chat_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from atlas.bus.client import CHATS, KV_CHAT_INDEX, Bus
from atlas.jsoncodec import dumps, loads

__all__ = ["ChatFollower", "ChatLog", "chat_subject"]

_READ_TIMEOUT_S = 5.0


def chat_subject(workspace_id: str, chat_id: str) -> str:
    return f"chats.{workspace_id}.{chat_id}"


def index_key(workspace_id: str, chat_id: str) -> str:
    return f"{workspace_id}.{chat_id}"


@dataclass
class ChatFollower:
    """A live, ordered read of one chat's records from a stream sequence on (replay, then new records)."""

    _sub: Any

    async def next(self, timeout: float) -> tuple[int, dict[str, Any]] | None:
        """The next record and its stream sequence, or None when none came within `timeout` seconds."""
        try:
            msg = await self._sub.next_msg(timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        return int(msg.metadata.sequence.stream), loads(msg.data)

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except Exception:  # the connection is closing: nothing left to release
            pass


class ChatLog:
    """The port for chats on the bus: append and read records, follow a chat, and its summary in the index."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    # ------------------------------------------------------------ records

    async def append(self, workspace_id: str, chat_id: str, record: dict[str, Any]) -> int:
        """Append one record (acknowledged, riding through elections like every write); its stream sequence."""
        ack = await self.bus.publish(chat_subject(workspace_id, chat_id), dumps(record))
        return int(ack.seq)

    async def read(self, workspace_id: str, chat_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Every record of the chat, in order (one ordered consumer, not one request per record)."""
        subject = chat_subject(workspace_id, chat_id)
        info = await self.bus.js.stream_info(CHATS, subjects_filter=subject)
        if not (info.state.subjects or {}).get(subject):
            return []
        sub = await self.bus.js.subscribe(subject, stream=CHATS, ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.ALL)
        out: list[tuple[int, dict[str, Any]]] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
                out.append((int(msg.metadata.sequence.stream), loads(msg.data)))
                if not msg.metadata.num_pending:
                    return out
        finally:
            await sub.unsubscribe()

    async def follow(self, workspace_id: str, chat_id: str, from_seq: int) -> ChatFollower:
        """Records of the chat from stream sequence `from_seq` on: the ones there are, then each new one."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, from_seq))
        sub = await self.bus.js.subscribe(chat_subject(workspace_id, chat_id), stream=CHATS, ordered_consumer=True,
                                          config=config)
        return ChatFollower(sub)

    async def purge(self, workspace_id: str, chat_id: str) -> None:
        try:
            await self.bus.js.purge_stream(CHATS, subject=chat_subject(workspace_id, chat_id))
        except NotFoundError:
            pass

    # ------------------------------------------------------------ the index

    async def summary(self, workspace_id: str, chat_id: str) -> tuple[dict[str, Any], int] | None:
        """The chat's summary and its revision (for a compare-and-set), or None for an unknown chat."""
        return await self.bus.kv_get(KV_CHAT_INDEX, index_key(workspace_id, chat_id))

    async def create(self, workspace_id: str, chat_id: str, value: dict[str, Any]) -> int:
        """Create the chat's summary; `WrongLastSequence` when it exists."""
        return await self.bus.kv_create(KV_CHAT_INDEX, index_key(workspace_id, chat_id), value)

    async def update(self, workspace_id: str, chat_id: str, value: dict[str, Any], revision: int) -> int:
        """Compare-and-set on `revision`; `WrongLastSequence` when someone else changed it first."""
        return await self.bus.kv_update(KV_CHAT_INDEX, index_key(workspace_id, chat_id), value, revision)

    async def forget(self, workspace_id: str, chat_id: str) -> None:
        await self.bus.kv_delete(KV_CHAT_INDEX, index_key(workspace_id, chat_id))

    async def summaries(self, workspace_id: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """(workspaceId, chatId, summary) of every chat of the workspace (of all, when None): the index's last
        value per key, read with one ordered consumer."""
        stream = f"KV_{KV_CHAT_INDEX}"
        prefix = f"$KV.{KV_CHAT_INDEX}."
        wanted = prefix + (f"{workspace_id}.*" if workspace_id is not None else ">")
        info = await self.bus.js.stream_info(stream, subjects_filter=wanted)
        if not info.state.subjects:
            return []
        sub = await self.bus.js.subscribe(wanted, stream=stream, ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        out: list[tuple[str, str, dict[str, Any]]] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
                if msg.data and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    ws, _, chat = msg.subject[len(prefix):].partition(".")
                    out.append((ws, chat, loads(msg.data)))
                if not msg.metadata.num_pending:
                    return out
        finally:
            await sub.unsubscribe()
