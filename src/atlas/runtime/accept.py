"""The accept pipeline (spec §6.4): every trigger — HTTP, cron or cascade — becomes a durable queued session here.

Before `accept` returns, the inflight marker and `session:queued` are acknowledged by JetStream, the local read
model has the row, and the envelope is acknowledged on SIGNALS. That ordering is what lets a caller find its
session by correlationId the instant it gets the 202 (spec §4.3), and what guarantees that an accepted trigger is
never lost (§8.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atlas.bus.client import KV_INFLIGHT, dumps
from atlas.errors import ApiError
from atlas.runtime.workspaces import Workspace
from atlas.sessions.events import now_iso
from atlas.sessions.writer import SessionWriter

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_STRING = 256 * 1024


@dataclass
class TriggerRequest:
    workspace_id: str
    signal_id: str
    payload: Any
    trigger: str  # http | webhook | schedule | cascade
    parent_session_id: str | None = None
    stream_id: str | None = None
    webhook: dict[str, Any] | None = None


@dataclass
class Accepted:
    session_id: str
    correlation_id: str
    workspace_id: str
    signal_id: str
    job_id: str
    status: str
    error_code: str | None = None


def check_payload_limits(payload: Any) -> None:
    """400 payload_too_complex for depth > 32, more than 100 000 values or a string over 256 KiB (spec §5.3)."""
    count = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ApiError(400, "payload_too_complex", f"Payload has more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise ApiError(400, "payload_too_complex", f"Payload is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if len(value) > MAX_STRING // 4 and len(value.encode()) > MAX_STRING:
                raise ApiError(400, "payload_too_complex", "Payload has a string over 256 KiB")
        elif isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def schema_errors(ws: Workspace, signal_id: str, payload: Any) -> list[dict[str, str]]:
    validator = ws.validators.get(signal_id)
    if validator is None:
        return []
    errors = sorted(validator.iter_errors(payload if payload is not None else {}), key=lambda e: list(e.path))
    return [
        {"path": ".".join(str(p) for p in err.absolute_path), "message": err.message} for err in errors[:50]
    ]


class AcceptPipeline:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def resolve(self, workspace_id: str, signal_id: str) -> tuple[Workspace, str]:
        """The workspace and the job handling the signal, or the 404 of spec §5.3 (3)–(4)."""
        ws = self.d.workspaces.get(workspace_id)
        if ws is None:
            raise ApiError(404, "workspace_not_found", f"Workspace '{workspace_id}' not found")
        if signal_id not in ws.config.signals:
            raise ApiError(404, "signal_not_found", f"Signal '{signal_id}' not found in workspace '{workspace_id}'")
        job_id = ws.job_for_signal.get(signal_id)
        if job_id is None:
            raise ApiError(404, "no_job_for_signal", f"No job handles signal '{signal_id}' in '{workspace_id}'")
        return ws, job_id

    def validate_payload(self, ws: Workspace, signal_id: str, payload: Any) -> None:
        check_payload_limits(payload)
        errors = schema_errors(ws, signal_id, payload)
        if errors:
            raise ApiError(
                400, "payload_invalid", f"Payload does not match the schema of signal '{signal_id}'", errors
            )

    def validate(self, req: TriggerRequest) -> tuple[Workspace, str, dict[str, Any] | None]:
        """Spec §5.3 steps (3), (4), (7), (8), (9): the workspace, the job and the parent view."""
        ws, job_id = self.resolve(req.workspace_id, req.signal_id)
        self.validate_payload(ws, req.signal_id, req.payload)
        parent = None
        if req.parent_session_id is not None:
            parent = self.d.store.view(req.parent_session_id)
            if parent is None:
                code = "unknown_parent_session"
                raise ApiError(422, code, f"Parent session '{req.parent_session_id}' not found")
        return ws, job_id, parent

    async def accept(self, req: TriggerRequest,
                     validated: tuple[Workspace, str, dict[str, Any] | None] | None = None) -> Accepted:
        """Validate (unless the caller did), mint ids, make the session durable and hand the envelope to SIGNALS."""
        ws, job_id, parent = validated or self.validate(req)
        self.d.ensure_accepting()

        sid = str(uuid.uuid4())
        if parent is not None:
            correlation_id = parent["correlationId"]
            root = parent.get("rootSessionId") or parent["sessionId"]
            depth = int(parent.get("depth", 0)) + 1
        else:
            correlation_id, root, depth = str(uuid.uuid4()), sid, 0
        payload = req.payload
        task = payload.get("task") if isinstance(payload, dict) and isinstance(payload.get("task"), str) else job_id
        accepted_at = now_iso()
        envelope: dict[str, Any] = {
            "workspaceId": ws.id,
            "signalId": req.signal_id,
            "sessionId": sid,
            "correlationId": correlation_id,
            "rootSessionId": root,
            "depth": depth,
            "trigger": req.trigger,
            "payload": payload,
            "acceptedAt": accepted_at,
            "acceptedBy": self.d.daemon_id,
        }
        if parent is not None:
            envelope["parentSessionId"] = parent["sessionId"]
        if req.stream_id is not None:
            envelope["streamId"] = req.stream_id
        if req.webhook is not None:
            envelope["webhook"] = req.webhook
        queued = {
            "workspaceId": ws.id,
            "jobName": job_id,
            "signalId": req.signal_id,
            "task": task,
            "trigger": req.trigger,
            "correlationId": correlation_id,
            "parentSessionId": envelope.get("parentSessionId"),
            "rootSessionId": root,
            "depth": depth,
            "plannedSteps": ws.plans[job_id],
            "payload": payload,
        }
        marker = {
            "sessionId": sid,
            "workspaceId": ws.id,
            "signalId": req.signal_id,
            "correlationId": correlation_id,
            "state": "queued",
            "acceptedBy": self.d.daemon_id,
            "acceptedAt": accepted_at,
            "envelope": envelope,
        }
        writer = SessionWriter(self.d.bus, self.d.store, sid)
        try:
            dumps(marker)  # anything unencodable fails here, before a single write
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_body", f"Payload cannot be stored: {exc}") from None
        try:
            # The marker and session:queued are independent: write them concurrently, then the envelope.
            # Both are awaited to the end even if one fails, so a failure below always knows whether
            # session:queued exists (and then ends it) — never a `queued` session without a marker.
            results = await asyncio.gather(self.d.bus.kv_put(KV_INFLIGHT, sid, marker),
                                           writer.append("session:queued", queued), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            limit_code = self._cascade_limit(depth, correlation_id)
            if limit_code is not None:
                await self._end_unstarted(writer, limit_code)
                return Accepted(sid, correlation_id, ws.id, req.signal_id, job_id, "failed", limit_code)
            envelope["queuedStreamSeq"] = writer.stream_seq
            await self.d.bus.publish_envelope(envelope)
        except ApiError:
            raise
        except Exception as exc:
            if writer.seq > 0:  # session:queued is durable: end it rather than leave it queued forever
                with contextlib.suppress(Exception):
                    await self.d.finalize_unstarted(writer, "failed", "bus_unavailable",
                                                    f"Acceptance did not finish: {type(exc).__name__}")
            raise ApiError(503, "bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}") from exc
        return Accepted(sid, correlation_id, ws.id, req.signal_id, job_id, "queued")

    def _cascade_limit(self, depth: int, correlation_id: str) -> str | None:
        if depth > self.d.settings.max_cascade_depth:
            return "cascade_depth_exceeded"
        if depth > 0 and self.d.store.rm.count_correlation(correlation_id) > self.d.settings.max_tree_sessions:
            return "cascade_limit_exceeded"
        return None

    async def _end_unstarted(self, writer: SessionWriter, code: str) -> None:
        messages = {
            "cascade_depth_exceeded": f"Cascade depth exceeds ATLAS_MAX_CASCADE_DEPTH "
            f"({self.d.settings.max_cascade_depth})",
            "cascade_limit_exceeded": f"Correlation tree exceeds ATLAS_MAX_TREE_SESSIONS "
            f"({self.d.settings.max_tree_sessions})",
        }
        await self.d.finalize_unstarted(writer, "failed", code, messages[code])
