"""The workspace's jobs as the chat agent's tools (issue #17, item 3).

Every job one of whose signals is `http` is a tool: its name is the job's id, its description the job's, its input
schema the signal's (`system` and `schedule` signals are never offered: nobody triggers those by hand). A call is
a trigger like any other: the same accept pipeline as `POST /signals` (schema validation, concurrency policy,
cascade limits), with `trigger: "chat"`, the turn's correlationId (so every run a turn starts is one tree, found by
`GET /api/sessions?correlationId=`) and `chat: {chatId, turnId}` on the session so its page links back.

Idempotency: the call takes an Idempotency-Key made of the chat, the turn and the model's tool call id, through the
same `Idempotency` records as HTTP triggers; a retried turn (same turn id, same tool call id) gets the first run
back instead of a second one. Then the call waits (`ATLAS_CHAT_JOB_WAIT`) for the run's end and answers with its
output; past the bound it answers the run's ids and status, and the run keeps going.

Failures are results, never exceptions (`ToolRunner`): a payload the schema refuses comes back as the 400's error
JSON, so the model can correct its arguments and call again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atlas.config.model import HttpSignal
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps
from atlas.llm.conversation import ToolSpec
from atlas.llm.loop import CALL_ID, ToolOutcome
from atlas.runtime.accept import AcceptPipeline, TriggerRequest
from atlas.runtime.idempotency import Idempotency
from atlas.runtime.workspaces import Workspace
from atlas.sessions.store import SessionStore

__all__ = ["JobTools", "TurnIds", "job_signals"]

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class TurnIds:
    workspace_id: str
    chat_id: str
    turn_id: str
    correlation_id: str


def job_signals(ws: Workspace) -> dict[str, str]:
    """job id → the first of its `http` signals, for every job a chat may run (a job whose agents atlas lacks is
    left out: it refuses every trigger)."""
    out: dict[str, str] = {}
    for job_id, job in ws.config.jobs.items():
        if ws.unavailable.get(job_id):
            continue
        for ref in job.triggers:
            if isinstance(ws.config.signals.get(ref.signal), HttpSignal):
                out[job_id] = ref.signal
                break
    return out


def _error_result(exc: AtlasError) -> ToolOutcome:
    """The refusal as the API answers it (`atlas.api.errors.error_body`'s shape), for the model to read."""
    err: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        err["details"] = exc.details
    body = {"error": err}
    return ToolOutcome(text=json.dumps(body, ensure_ascii=False, default=str), result=body,
                       error=f"{exc.code}: {exc.message}")


class JobTools:
    """A `ToolRunner` over one workspace's jobs, for one chat turn."""

    def __init__(self, *, ws: Workspace, accept: AcceptPipeline, idempotency: Idempotency, store: SessionStore,
                 turn: TurnIds, wait_s: float, on_session: Callable[[dict[str, Any]], None]) -> None:
        self.ws = ws
        self.accept = accept
        self.idempotency = idempotency
        self.store = store
        self.turn = turn
        self.wait_s = wait_s
        self.on_session = on_session
        self._signals = job_signals(ws)
        self.specs = [self._spec(job_id, signal_id) for job_id, signal_id in self._signals.items()]
        self.names = set(self._signals)

    def _spec(self, job_id: str, signal_id: str) -> ToolSpec:
        job = self.ws.config.jobs[job_id]
        signal = self.ws.config.signals[signal_id]
        description = job.description or job.title or signal.description or f"Run the job '{job_id}'."
        schema = signal.schema_ if isinstance(signal.schema_, dict) else _EMPTY_SCHEMA
        return ToolSpec(job_id, description, schema)

    def server_of(self, name: str) -> str | None:
        return None

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        signal_id = self._signals.get(name)
        if signal_id is None:
            return ToolOutcome(text=f"Error: unknown job {name!r}", error=f"unknown job {name!r}")
        call_id = CALL_ID.get() or str(uuid.uuid4())
        t = self.turn
        req = TriggerRequest(workspace_id=t.workspace_id, signal_id=signal_id, payload=args, trigger="chat",
                             correlation_id=t.correlation_id, chat={"chatId": t.chat_id, "turnId": t.turn_id})
        try:
            session_id, correlation_id = await self._trigger(req, call_id)
        except AtlasError as exc:
            return _error_result(exc)
        link = {"toolCallId": call_id, "sessionId": session_id, "correlationId": correlation_id, "jobName": name}
        self.on_session({**link, "status": "queued"})
        try:
            view = await self.store.wait_terminal(session_id, self.wait_s)
        except TimeoutError:
            status = (self.store.view(session_id) or {}).get("status", "queued")
            self.on_session({**link, "status": status})
            result = {"sessionId": session_id, "correlationId": correlation_id, "status": status,
                      "stillRunning": True,
                      "message": f"The run has not ended after {self.wait_s:g}s; it keeps running."}
            return ToolOutcome(text=json.dumps(result), result=result)
        status = view.get("status", "")
        self.on_session({**link, "status": status})
        result = {"sessionId": session_id, "correlationId": correlation_id, "status": status}
        if status == "completed":
            result["output"] = view.get("results") or {}
            return ToolOutcome(text=json.dumps(result, ensure_ascii=False, default=str), result=result)
        for key in ("error", "errorCode"):
            if view.get(key):
                result[key] = view[key]
        return ToolOutcome(text=json.dumps(result, ensure_ascii=False, default=str), result=result,
                           error=f"the run ended {status}" + (f": {view['error']}" if view.get("error") else ""))

    async def _trigger(self, req: TriggerRequest, call_id: str) -> tuple[str, str]:
        """Accept the trigger once per (chat, turn, tool call): (sessionId, correlationId)."""
        validated = self.accept.validate(req)
        t = self.turn
        key = f"chat:{t.chat_id}:{t.turn_id}:{call_id}"[:255]
        reservation = await self.idempotency.reserve(t.workspace_id, req.signal_id, key, dumps(req.payload))
        if reservation.replay is not None:
            return reservation.replay["sessionId"], reservation.replay["correlationId"]
        try:
            accepted = await self.accept.accept(req, validated)
        except BaseException:
            await self.idempotency.release(reservation)
            raise
        await self.idempotency.accepted(reservation, {
            "sessionId": accepted.session_id, "correlationId": accepted.correlation_id, "status": "accepted",
            "location": f"/api/sessions/{accepted.session_id}",
        })
        return accepted.session_id, accepted.correlation_id
