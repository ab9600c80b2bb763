"""Workspace chats (issue #17): start a turn, list, read, follow, retitle and delete chats, and settle the turns a
dead daemon left.

Who runs a turn: the daemon that accepted its `POST`, as a task of its own, not of the request, so a client that
goes away (or reconnects to another daemon with `GET …/stream`) does not end the reply. The chat's index entry
names the turn in progress and the daemon *process* running it (id, pid, start time, as its heartbeat does); the
entry is claimed with compare-and-set, so a second turn in the same chat is refused (`chat_busy`) on every daemon.

Recovery: a turn whose process is gone (kill -9; the heartbeat expired or now comes from another process of the
same daemon id) is settled by whoever meets it first (this daemon at start, a listing, a read, a stream, a new
turn): its index entry is cleared with compare-and-set, and the winner appends the reply's `done` record with
status `interrupted`. Everything written before the crash stays (finished messages, and the partial reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atlas.agents.base import StepError
from atlas.bus.chatlog import ChatLog
from atlas.bus.client import WrongLastSequence
from atlas.chat import records
from atlas.chat.jobtools import JobTools, TurnIds
from atlas.chat.tools import CompositeTools, ToolSet
from atlas.chat.turn import ChatModel, ChatSettings, Recorder, history, resolve_model, run_model, system_prompt
from atlas.errors import AtlasError
from atlas.llm.conversation import Message, UserMessage
from atlas.mcp.servers import WorkspaceTools
from atlas.memory import MemoryStore, memory_tools, narrative_prompt
from atlas.runtime.accept import AcceptPipeline
from atlas.runtime.idempotency import Idempotency, check_key
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions.events import now_iso
from atlas.sessions.store import SessionStore
from atlas.templating import StreamRedactor, Templater

__all__ = ["ChatService", "StartedTurn"]

log = logging.getLogger("atlas.chat")

#: How often a follower with nothing to read checks that the turn's daemon is still alive.
LIVENESS_CHECK_S = 5.0
#: How long a reply stream holds its `done` back until the turn has cleared the chat's index entry.
RELEASE_WAIT_S = 5.0
_IDS = uuid.UUID("6f1d8a52-3c1e-4a8e-9a57-1f0c7e2d9b40")  # namespace of ids derived from an Idempotency-Key


@dataclass(frozen=True)
class StartedTurn:
    workspace_id: str
    chat_id: str
    turn_id: str
    correlation_id: str
    message_id: str
    title: str
    start_seq: int


class ChatService:
    def __init__(self, *, chat_log: ChatLog, workspaces: WorkspaceRegistry, accept: AcceptPipeline,
                 idempotency: Idempotency, store: SessionStore, templater: Templater, memory: MemoryStore,
                 mcp_tools: Callable[[Workspace], WorkspaceTools | None],
                 process_of: Callable[[str], Awaitable[tuple[Any, Any] | None]], daemon_id: str, started_at: str,
                 settings: ChatSettings, environ: Mapping[str, str] | None = None) -> None:
        self.log = chat_log
        self.workspaces = workspaces
        self.accept = accept
        self.idempotency = idempotency
        self.store = store
        self.templater = templater
        self.memory = memory
        self.mcp_tools = mcp_tools
        self.process_of = process_of
        self.daemon_id = daemon_id
        self.started_at = started_at
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self._turns: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stopping = False
        self._closing = asyncio.Event()

    def close_streams(self) -> None:
        """End every open reply stream now (the HTTP server is stopping: an open stream would hold its graceful
        shutdown); the turns run on until `stop`, and a client that reconnects follows them elsewhere."""
        self._closing.set()

    # ------------------------------------------------------------ owners and recovery

    def _owner(self) -> dict[str, Any]:
        return {"daemonId": self.daemon_id, "pid": os.getpid(), "startedAt": self.started_at}

    async def _owner_gone(self, owner: dict[str, Any] | None) -> bool:
        if not owner:
            return True
        mine = (owner.get("pid"), owner.get("startedAt"))
        if owner.get("daemonId") == self.daemon_id:
            return mine != (os.getpid(), self.started_at)
        beat = await self.process_of(str(owner.get("daemonId")))
        return beat is None or tuple(beat) != mine

    async def _settle(self, ws_id: str, chat_id: str, found: tuple[dict[str, Any], int] | None
                      ) -> tuple[dict[str, Any], int] | None:
        """The summary, with a turn whose process is gone ended `interrupted` (by whoever clears it first)."""
        while found is not None:
            summary, revision = found
            turn = summary.get("turn")
            if not turn or not await self._owner_gone(turn.get("owner")):
                return found
            cleared = {k: v for k, v in summary.items() if k != "turn"}
            try:
                revision = await self.log.update(ws_id, chat_id, cleared, revision)
            except WrongLastSequence:
                found = await self.log.summary(ws_id, chat_id)
                continue
            log.info("chat %s: turn %s interrupted (its daemon is gone)", chat_id, turn.get("turnId"))
            await self.log.append(ws_id, chat_id, records.done(
                turn["messageId"], "interrupted", "The daemon running this reply stopped before it ended"))
            return cleared, revision
        return None

    async def recover(self) -> None:
        """At start: settle every turn a dead process left (a kill -9 of this very daemon included)."""
        try:
            every = await self.log.summaries()
        except Exception as exc:
            log.warning("chat recovery could not list chats: %s", exc)
            return
        for ws_id, chat_id, summary in every:
            if summary.get("turn"):
                with contextlib.suppress(Exception):
                    await self._settle(ws_id, chat_id, await self.log.summary(ws_id, chat_id))

    async def stop(self) -> None:
        """Interrupt the turns this daemon runs (each records its `done`), before the bus closes."""
        self._stopping = True
        tasks = list(self._turns.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------ reads

    def workspace(self, ws_id: str) -> Workspace:
        ws = self.workspaces.get(ws_id)
        if ws is None:
            raise AtlasError("workspace_not_found", f"Workspace '{ws_id}' not found")
        return ws

    async def _found(self, ws_id: str, chat_id: str) -> tuple[dict[str, Any], int]:
        records.check_chat_id(chat_id)
        found = await self._settle(ws_id, chat_id, await self.log.summary(ws_id, chat_id))
        if found is None:
            raise AtlasError("chat_not_found", f"Chat '{chat_id}' not found in workspace '{ws_id}'")
        return found

    async def list_chats(self, ws_id: str) -> list[dict[str, Any]]:
        self.workspace(ws_id)
        out = []
        for _, chat_id, summary in await self.log.summaries(ws_id):
            if summary.get("turn"):
                settled = await self._settle(ws_id, chat_id, await self.log.summary(ws_id, chat_id))
                if settled is None:
                    continue
                summary = settled[0]
            out.append(records.summary_out(chat_id, summary))
        out.sort(key=lambda c: (c["updatedAt"], c["chatId"]), reverse=True)
        return out

    async def get_chat(self, ws_id: str, chat_id: str) -> dict[str, Any]:
        self.workspace(ws_id)
        summary, _ = await self._found(ws_id, chat_id)
        stored = [record for _, record in await self.log.read(ws_id, chat_id)]
        active = (summary.get("turn") or {}).get("messageId")
        out = records.summary_out(chat_id, summary)
        out.pop("messageCount")
        return {**out, "messages": records.messages(stored, active)}

    async def set_title(self, ws_id: str, chat_id: str, title: str) -> dict[str, Any]:
        self.workspace(ws_id)
        while True:
            summary, revision = await self._found(ws_id, chat_id)
            changed = {**summary, "title": title, "updatedAt": now_iso()}
            try:
                await self.log.update(ws_id, chat_id, changed, revision)
            except WrongLastSequence:
                continue
            return records.summary_out(chat_id, changed)

    async def delete_chat(self, ws_id: str, chat_id: str) -> None:
        self.workspace(ws_id)
        await self._found(ws_id, chat_id)
        task = self._turns.get((ws_id, chat_id))
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.log.forget(ws_id, chat_id)
        await self.log.purge(ws_id, chat_id)

    # ------------------------------------------------------------ a turn

    async def start_turn(self, ws_id: str, message: str, chat_id: str | None,
                         idempotency_key: str | None) -> StartedTurn:
        """Claim the chat (new or existing) for a turn, record the user's message and the reply's start, and run
        the reply in a task of its own. Every refusal comes before anything is written."""
        ws = self.workspace(ws_id)
        model = resolve_model(ws, self.settings, self.environ)
        if self._stopping:
            raise AtlasError("shutting_down", "The daemon is shutting down")
        derived = False
        if idempotency_key is not None:
            check_key(idempotency_key)
            if chat_id is None:
                chat_id, derived = str(uuid.uuid5(_IDS, f"chat\n{ws_id}\n{idempotency_key}")), True
            turn_id = str(uuid.uuid5(_IDS, f"turn\n{chat_id}\n{idempotency_key}"))
            correlation_id = str(uuid.uuid5(_IDS, f"correlation\n{chat_id}\n{idempotency_key}"))
        else:
            turn_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        new_chat = chat_id is None or derived
        chat_id = records.check_chat_id(chat_id or str(uuid.uuid4()))
        message_id = str(uuid.uuid4())
        now = now_iso()
        turn = {"turnId": turn_id, "messageId": message_id, "correlationId": correlation_id, "owner": self._owner()}
        summary = await self._claim(ws_id, chat_id, new_chat, message, turn, now)
        try:
            stored = [record for _, record in await self.log.read(ws_id, chat_id)]
            earlier = records.messages(stored, None)
            retry = any(m["role"] == "user" and m["turnId"] == turn_id for m in earlier)
            if not retry:
                await self.log.append(ws_id, chat_id, self.templater.redact(records.user(
                    id=str(uuid.uuid4()), text=message, created_at=now, turn_id=turn_id,
                    correlation_id=correlation_id)))
            start_seq = await self.log.append(ws_id, chat_id, records.start(
                message_id=message_id, turn_id=turn_id, correlation_id=correlation_id, created_at=now_iso()))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._release(ws_id, chat_id, turn_id, 0)
            raise
        ids = TurnIds(ws_id, chat_id, turn_id, correlation_id)
        task = asyncio.create_task(self._run(ws, model, ids, message_id, history(earlier, turn_id), message,
                                             added=0 if retry else 1), name=f"chat-turn-{chat_id}")
        self._turns[(ws_id, chat_id)] = task
        task.add_done_callback(lambda _: self._turns.pop((ws_id, chat_id), None))
        return StartedTurn(ws_id, chat_id, turn_id, correlation_id, message_id, summary["title"], start_seq)

    async def _claim(self, ws_id: str, chat_id: str, new_chat: bool, message: str, turn: dict[str, Any],
                     now: str) -> dict[str, Any]:
        while True:
            found = await self._settle(ws_id, chat_id, await self.log.summary(ws_id, chat_id))
            if found is None:
                if not new_chat:
                    raise AtlasError("chat_not_found", f"Chat '{chat_id}' not found in workspace '{ws_id}'")
                summary = {"title": records.title_of(message), "createdAt": now, "updatedAt": now,
                           "messageCount": 0, "turn": turn}
                try:
                    await self.log.create(ws_id, chat_id, summary)
                except WrongLastSequence:
                    continue
                return summary
            current, revision = found
            if current.get("turn"):
                raise AtlasError("chat_busy", f"A reply is already being written in chat '{chat_id}'",
                                 {"chatId": chat_id, "turnId": current["turn"].get("turnId")})
            summary = {**current, "updatedAt": now, "turn": turn}
            try:
                await self.log.update(ws_id, chat_id, summary, revision)
            except WrongLastSequence:
                continue
            return summary

    async def _release(self, ws_id: str, chat_id: str, turn_id: str, added: int) -> None:
        """Clear our turn from the index (and count its messages), unless someone settled it already."""
        while True:
            found = await self.log.summary(ws_id, chat_id)
            if found is None:
                # Deleted while this turn replied, maybe through another daemon, which purged what was written by
                # then: what this turn wrote since goes too (its records are all written before this release).
                await self.log.purge(ws_id, chat_id)
                return
            summary, revision = found
            if (summary.get("turn") or {}).get("turnId") != turn_id:
                return
            cleared = {k: v for k, v in summary.items() if k != "turn"}
            cleared["messageCount"] = int(cleared.get("messageCount", 0)) + added
            cleared["updatedAt"] = now_iso()
            try:
                await self.log.update(ws_id, chat_id, cleared, revision)
                return
            except WrongLastSequence:
                continue

    async def _run(self, ws: Workspace, model: ChatModel, ids: TurnIds, message_id: str, earlier: list[Message],
                   message: str, added: int) -> None:
        recorder = Recorder(self.log, ws.id, ids.chat_id, message_id, self.templater.redact,
                            StreamRedactor(self.templater))
        status, error = "completed", None
        try:
            if model.endpoint.api_key:
                self.templater.add_secret(model.endpoint.api_key)
            tools = await self._tools(ws, model, ids, recorder)
            narrative = await narrative_prompt(self.memory, ws)
            system = system_prompt(ws, model.prompt, narrative)
            await run_model(model, system, [*earlier, UserMessage(message)], tools, recorder)
        except asyncio.CancelledError:
            status, error = "interrupted", "The reply was stopped (daemon shutdown or chat deleted)"
            raise
        except StepError as exc:
            status, error = "failed", f"{exc.code}: {exc.message}"
        except Exception as exc:
            log.exception("chat %s: the turn failed", ids.chat_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.shield(self._finish(recorder, ids, message_id, status, error, added))

    async def _finish(self, recorder: Recorder, ids: TurnIds, message_id: str, status: str, error: str | None,
                      added: int) -> None:
        recorder.put(records.done(message_id, status, str(self.templater.redact(error)) if error else None))
        await recorder.close()
        try:
            await self._release(ids.workspace_id, ids.chat_id, ids.turn_id, added + 1)
        except Exception as exc:
            log.warning("chat %s: the turn's index entry could not be cleared: %s", ids.chat_id, exc)

    async def _tools(self, ws: Workspace, model: ChatModel, ids: TurnIds, recorder: Recorder) -> CompositeTools:
        def on_session(link: dict[str, Any]) -> None:
            recorder.put({"type": "session", **link})

        sets: list[ToolSet] = [JobTools(ws=ws, accept=self.accept, idempotency=self.idempotency, store=self.store,
                                        turn=ids, wait_s=self.settings.job_wait_s, on_session=on_session)]
        if ws.config.memory.own:
            sets.append(memory_tools(self.memory, ws, {"chatId": ids.chat_id},
                                     lambda text: str(self.templater.redact(text))))
        if model.tools:
            mcp = self.mcp_tools(ws)
            if mcp is None:
                raise StepError("unknown_tool", f"chat.tools names {model.tools[0]!r} but the workspace has no "
                                "tools.mcp servers")
            sets.append(await mcp.resolve(list(model.tools)))
        return CompositeTools(sets)

    # ------------------------------------------------------------ following a turn

    async def turn_in_progress(self, ws_id: str, chat_id: str) -> tuple[StartedTurn | None, dict[str, Any] | None]:
        """(the turn in progress, None) or (None, the `done` data of the last reply, None if there is none)."""
        self.workspace(ws_id)
        summary, _ = await self._found(ws_id, chat_id)
        stored = await self.log.read(ws_id, chat_id)
        turn = summary.get("turn")
        if turn:
            for seq, record in stored:
                if record.get("type") == "start" and record.get("messageId") == turn["messageId"]:
                    return StartedTurn(ws_id, chat_id, turn["turnId"], turn["correlationId"], turn["messageId"],
                                       summary.get("title", ""), seq), None
        msgs = records.messages([r for _, r in stored], turn["messageId"] if turn else None)
        replies = [m for m in msgs if m["role"] == "assistant"]
        if not replies:
            return None, None
        last = replies[-1]
        done = {"messageId": last["id"], "status": last.get("status", "completed")}
        if last.get("error"):
            done["error"] = last["error"]
        return None, done

    async def _released(self, turn: StartedTurn) -> None:
        """Wait (at most RELEASE_WAIT_S) until the chat's index entry no longer names `turn`.

        Why: a turn writes its `done` record and then clears its index entry; a client that sends its next message
        the moment it reads `done` must not be refused `chat_busy` (nor list the chat without the reply counted)
        in between. This daemon's own turn is awaited; another daemon's is polled in the index."""
        task = self._turns.get((turn.workspace_id, turn.chat_id))
        if task is not None:
            await asyncio.wait({task}, timeout=RELEASE_WAIT_S)
            return
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + RELEASE_WAIT_S, 0.005
        while not self._closing.is_set() and loop.time() < deadline:
            found = await self.log.summary(turn.workspace_id, turn.chat_id)
            if found is None or (found[0].get("turn") or {}).get("turnId") != turn.turn_id:
                return
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.1)

    async def follow(self, turn: StartedTurn, keepalive: Callable[[], Any] | None = None
                     ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        """The turn's events (name, data), replayed from its start and then live, ending with `done`; None now
        and then while nothing happens (the caller sends a keep-alive). A turn whose daemon dies is settled here."""
        follower = await self.log.follow(turn.workspace_id, turn.chat_id, turn.start_seq)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                reading = asyncio.ensure_future(follower.next(LIVENESS_CHECK_S))
                await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    return
                got = reading.result()
                if got is None:
                    yield None
                    found = await self.log.summary(turn.workspace_id, turn.chat_id)
                    if found is None:
                        return  # deleted
                    await self._settle(turn.workspace_id, turn.chat_id, found)
                    continue
                _, record = got
                if record.get("messageId") != turn.message_id:
                    continue
                event = records.sse_event(record, chat_id=turn.chat_id, title=turn.title)
                if record.get("type") == "done":
                    await self._released(turn)
                if event is not None:
                    yield event
                if record.get("type") == "done":
                    return
        finally:
            closing.cancel()
            await follower.close()
