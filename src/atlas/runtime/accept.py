"""The accept pipeline (spec §6.4): every trigger — HTTP, cron or cascade — becomes a durable queued session here.

Before `accept` returns, the envelope is acknowledged on SIGNALS and `session:queued` on SESSION_EVENTS (and
applied to the local store). The envelope is what makes the trigger durable: a crash after it is redelivered and
run, and the consumer writes `session:queued` itself if it is missing (§8.2). `session:queued` before the 202 is
what lets a caller find its session by correlationId the instant it gets the answer (spec §4.3).

The two publishes are in flight together (one flush, one read of both acks): a trigger's loop time is what limits
intake, and waiting for one ack before sending the other cost a tenth of it. So `session:queued` can land while
the envelope does not (a SIGNALS leader lost on a cluster): the caller gets `bus_unavailable`, the session is
ended `failed` / `bus_unavailable` if the bus lets us, and otherwise recovery republishes an envelope rebuilt from
the log (`Recovery._republish_stranded`), so no queued record is left without work behind it.

Both writes ride through a leader election (issue 19, bug 14): on a cluster that lost one node of three, a stream
led there answers nothing for the 4–9 s nats-server takes to elect another leader, and refusing every trigger
meanwhile stopped the whole cluster for that long. Each write is sent again (same dedupe id) until JetStream
answers, for up to half the bus's `write_retry_s` (15 s by default: one election, with room); only a bus that stays
silent that long — no quorum — makes the caller get `bus_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from atlas.bus.client import Bus
from atlas.bus.records import envelope as make_envelope
from atlas.bus.sessionlog import SessionLog
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps
from atlas.observability.tracing import Tracing
from atlas.runtime.finalizer import Finalizer
from atlas.runtime.intake import Intake
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions import events
from atlas.sessions.events import SessionQueuedEvent, now_iso
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter

log = logging.getLogger("atlas.accept")

MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_STRING = 256 * 1024


@dataclass
class TriggerRequest:
    workspace_id: str
    signal_id: str
    payload: Any
    trigger: str  # a `Trigger` of atlas.sessions.events: http | webhook | schedule | cascade | ui | cli | rerun
    parent_session_id: str | None = None
    stream_id: str | None = None
    webhook: dict[str, Any] | None = None
    skip_states: list[str] | None = None  # the envelope's `skipStates` (issue #14), checked against the job's FSM
    rerun_of: str | None = None  # for `trigger="rerun"`: the session re-run (issue #16)
    correlation_id: str | None = None  # a top-level trigger joins this tree (a chat turn's, issue #17); else minted
    chat: dict[str, str] | None = None  # for `trigger="chat"`: `{chatId, turnId}` recorded on the session (#17)


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
    """`payload_too_complex` for depth > 32, more than 100 000 values or a string over 256 KiB (spec §5.3)."""
    count = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise AtlasError("payload_too_complex", f"Payload has more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise AtlasError("payload_too_complex", f"Payload is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if len(value) > MAX_STRING // 4 and len(value.encode()) > MAX_STRING:
                raise AtlasError("payload_too_complex", "Payload has a string over 256 KiB")
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


def session_task(envelope: dict[str, Any], job_id: str) -> str:
    """A session's `task`: the payload's `task` string when it has one, else the job's id (queued and start alike)."""
    payload = envelope.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("task"), str):
        return str(payload["task"])
    return job_id


def queued_event(envelope: dict[str, Any], ws: Workspace | None, job_id: str) -> SessionQueuedEvent:
    """`session:queued` of the envelope's session (the accept pipeline and, as a fallback, the consumer)."""
    payload = envelope.get("payload")
    task = session_task(envelope, job_id)
    return events.queued(
        sessionId=envelope["sessionId"],
        workspaceId=envelope["workspaceId"],
        jobName=job_id,
        signalId=envelope["signalId"],
        task=task,
        trigger=envelope["trigger"],
        correlationId=envelope["correlationId"],
        parentSessionId=envelope.get("parentSessionId"),
        rootSessionId=envelope["rootSessionId"],
        depth=envelope["depth"],
        plannedSteps=ws.plans.get(job_id, []) if ws is not None else [],
        payload=payload,
        skipStates=envelope.get("skipStates"),
        rerunOf=envelope.get("rerunOf"),
        chat=envelope.get("chat"),
        traceparent=envelope.get("traceparent"),
    )


class AcceptObserver(Protocol):
    """What the accept pipeline reports to metrics (`atlas.observability.metrics.Metrics`)."""

    def trigger_accepted(self, seconds: float) -> None: ...

    def trigger_refused(self, code: str) -> None: ...


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class AcceptPipeline:
    TAILS_KEPT = 100_000
    #: How long an accept waits for its queued row in a shared read model before answering anyway.
    COMMIT_WAIT_S = 5.0

    def __init__(self, *, bus: Bus, session_log: SessionLog, store: SessionStore, workspaces: WorkspaceRegistry,
                 finalizer: Finalizer, intake: Intake, daemon_id: str, max_cascade_depth: int,
                 max_tree_sessions: int, tracing: Tracing | None = None,
                 observer: AcceptObserver | None = None) -> None:
        self.bus = bus
        self.session_log = session_log
        self.store = store
        self.workspaces = workspaces
        self.finalizer = finalizer
        self.intake = intake
        self.daemon_id = daemon_id
        self.max_cascade_depth = max_cascade_depth
        self.max_tree_sessions = max_tree_sessions
        self.observer = observer
        self.tracing = tracing if tracing is not None else Tracing.off()
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._tails: dict[str, int] = {}
        self._cascading: dict[str, int] = {}  # correlationId -> cascades being accepted here right now

    def resolve(self, workspace_id: str, signal_id: str) -> tuple[Workspace, str]:
        """The workspace and the job handling the signal, or the not-found refusals of spec §5.3 (3)–(4)."""
        ws = self.workspaces.get(workspace_id)
        if ws is None:
            raise AtlasError("workspace_not_found", f"Workspace '{workspace_id}' not found")
        if signal_id not in ws.config.signals:
            raise AtlasError("signal_not_found", f"Signal '{signal_id}' not found in workspace '{workspace_id}'")
        job_id = ws.job_for_signal.get(signal_id)
        if job_id is None:
            raise AtlasError("no_job_for_signal", f"No job handles signal '{signal_id}' in '{workspace_id}'")
        ws.check_runnable(job_id)  # agent_unavailable: a job using an agent atlas lacks (issue #14)
        return ws, job_id

    def validate_payload(self, ws: Workspace, signal_id: str, payload: Any) -> None:
        check_payload_limits(payload)
        errors = schema_errors(ws, signal_id, payload)
        if errors:
            raise AtlasError(
                "payload_invalid", f"Payload does not match the schema of signal '{signal_id}'", errors
            )

    def validate(self, req: TriggerRequest) -> tuple[Workspace, str, dict[str, Any] | None]:
        """Spec §5.3 steps (3), (4), (7), (8), (9): the workspace, the job and the parent view."""
        ws, job_id = self.resolve(req.workspace_id, req.signal_id)
        self.validate_payload(ws, req.signal_id, req.payload)
        parent = None
        if req.parent_session_id is not None:
            parent = self.store.view(req.parent_session_id)
            if parent is None:
                raise AtlasError("unknown_parent_session", f"Parent session '{req.parent_session_id}' not found")
        return ws, job_id, parent

    async def accept(self, req: TriggerRequest,
                     validated: tuple[Workspace, str, dict[str, Any] | None] | None = None) -> Accepted:
        """Validate (unless the caller did), mint ids, hand the envelope to SIGNALS, then write `session:queued`.

        Every trigger (HTTP, cron, cascade, rerun) passes here, so here it is counted: accepted with its latency,
        or refused with its code (a cascade over a limit is refused too, though its failed record is written)."""
        if self.observer is None:
            return await self._accept(req, validated)
        started = time.perf_counter()
        try:
            accepted = await self._accept(req, validated)
        except AtlasError as exc:
            self.observer.trigger_refused(exc.code)
            raise
        if accepted.error_code is not None:
            self.observer.trigger_refused(accepted.error_code)
        else:
            self.observer.trigger_accepted(time.perf_counter() - started)
        return accepted

    async def _accept(self, req: TriggerRequest,
                      validated: tuple[Workspace, str, dict[str, Any] | None] | None) -> Accepted:
        ws, job_id, parent = validated or self.validate(req)
        self.intake.check()
        if self.store.shared and not self.store.writable():
            # Another daemon could not list what this one accepts now (issue #15): refuse rather than accept.
            raise AtlasError("read_model_unavailable", "The shared read model (PostgreSQL) cannot be written")

        sid = str(uuid.uuid4())
        if parent is not None:
            correlation_id = parent["correlationId"]
            root = parent.get("rootSessionId") or parent["sessionId"]
            depth = int(parent.get("depth", 0)) + 1
        else:
            correlation_id, root, depth = req.correlation_id or str(uuid.uuid4()), sid, 0
        envelope = make_envelope(
            workspace_id=ws.id, signal_id=req.signal_id, session_id=sid, correlation_id=correlation_id,
            root_session_id=root, depth=depth, trigger=req.trigger, payload=req.payload, accepted_at=now_iso(),
            accepted_by=self.daemon_id, parent_session_id=parent["sessionId"] if parent is not None else None,
            stream_id=req.stream_id, webhook=req.webhook, skip_states=req.skip_states, rerun_of=req.rerun_of,
            chat=req.chat,
        )
        if self.tracing.enabled:  # the session's span continues this trace, on whichever daemon runs it
            traceparent = self.tracing.envelope_traceparent(envelope)
            if traceparent is not None:
                envelope["traceparent"] = traceparent
        try:
            data = dumps(envelope)  # anything unencodable fails here, before a single write
        except (TypeError, ValueError) as exc:
            raise AtlasError("invalid_body", f"Payload cannot be stored: {exc}") from None
        limit_code = self._cascade_limit(depth, correlation_id)
        if limit_code == "cascade_limit_exceeded":
            # No record: a record per refused child is what let fan-out loops grow a tree far past its cap.
            raise AtlasError(limit_code, self._limit_message(limit_code))
        if limit_code is not None:
            return await self._refuse(ws, job_id, envelope, limit_code)
        if depth > 0:  # counted until its `session:queued` is in the read model, so racing cascades see it
            self._cascading[correlation_id] = self._cascading.get(correlation_id, 0) + 1

        # Both writes at once. Once SIGNALS has the envelope the trigger cannot be lost, whatever happens next; the
        # consumer that takes it waits for our `session:queued` (or writes it itself if we never could, §8.2).
        tail: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[sid] = tail
        budget = self.ride_through_s()
        writer = SessionWriter(self.session_log, self.store, sid, retry_for=budget)
        envelope_sent = asyncio.ensure_future(self.bus.publish_envelope(envelope, data, retry_for=budget))
        try:
            try:
                await writer.append(queued_event(envelope, ws, job_id))
            except Exception:
                # Lost to the consumer (it wrote `session:queued` first) or the bus failed: if the envelope is
                # durable the session exists or will, so this is still an accepted trigger.
                log.debug("session:queued of %s not written here", sid, exc_info=True)
                tail.set_result(0)
            else:
                tail.set_result(writer.stream_seq)
                self._tails[sid] = writer.stream_seq
                while len(self._tails) > self.TAILS_KEPT:
                    self._tails.pop(next(iter(self._tails)))
                if self.store.shared:  # read-your-writes on every daemon: the row is in the database before the 202
                    await self._row_committed(sid)
            try:
                await envelope_sent
            except Exception as exc:
                await self._strand(writer, exc)
                raise AtlasError("bus_unavailable",
                                 f"The message bus is unavailable: {type(exc).__name__}") from exc
        finally:
            if depth > 0:
                self._uncount_cascade(correlation_id)
            self._pending.pop(sid, None)
            if not tail.done():
                tail.set_result(0)
            if not envelope_sent.done():  # cancelled (the client went away mid-write): let it land or fail
                envelope_sent.add_done_callback(_consume_exception)
        return Accepted(sid, correlation_id, ws.id, req.signal_id, job_id, "queued")

    async def _row_committed(self, sid: str) -> None:
        """Wait (at most `COMMIT_WAIT_S`) for the queued row of a shared read model; past it the trigger is still
        accepted (it is in the log, and its row follows when the database answers again)."""
        try:
            async with asyncio.timeout(self.COMMIT_WAIT_S):
                await self.store.committed(sid)
        except TimeoutError:
            log.warning("queued row of %s not committed within %gs; accepted anyway", sid, self.COMMIT_WAIT_S)

    def ride_through_s(self) -> float:
        """How long an accept keeps sending its writes while the bus does not answer: half a run's patience, so a
        caller is answered (accepted or `bus_unavailable`) well before a client's usual 30–60 s timeout."""
        return self.bus.settings.write_retry_s / 2

    async def _strand(self, writer: SessionWriter, exc: BaseException) -> None:
        """The envelope did not land (the caller gets `bus_unavailable`). A `session:queued` that did is ended
        `failed` here; if even that write fails, recovery republishes the envelope from the log, so the session still
        ends."""
        self._tails.pop(writer.session_id, None)
        if writer.seq == 0:
            return
        with contextlib.suppress(Exception):
            await self.finalizer.end_unstarted(writer, "failed", "bus_unavailable",
                                            f"The trigger could not be queued: {type(exc).__name__}")

    async def queued_tail(self, sid: str) -> int:
        """The stream sequence of `session:queued` when this daemon wrote it (0 if unknown): the consumer's first
        write expects it, which saves a read per session. Waits while this daemon is still writing it."""
        pending = self._pending.get(sid)
        if pending is not None:
            return await asyncio.shield(pending)
        return self._tails.pop(sid, 0)

    async def _refuse(self, ws: Workspace, job_id: str, envelope: dict[str, Any], code: str) -> Accepted:
        """A cascade over a limit leaves a `failed` session record and no envelope (nothing to run)."""
        sid = envelope["sessionId"]
        writer = SessionWriter(self.session_log, self.store, sid, retry_for=self.ride_through_s())
        try:
            await writer.append(queued_event(envelope, ws, job_id))
            await self._end_unstarted(writer, code)
        except Exception as exc:
            if writer.seq > 0:  # session:queued is durable: end it rather than leave it queued forever
                with contextlib.suppress(Exception):
                    await self.finalizer.end_unstarted(writer, "failed", code, f"{code}: {type(exc).__name__}")
            raise AtlasError("bus_unavailable", f"The message bus is unavailable: {type(exc).__name__}") from exc
        return Accepted(sid, envelope["correlationId"], ws.id, envelope["signalId"], job_id, "failed", code)

    def _cascade_limit(self, depth: int, correlation_id: str) -> str | None:
        """Spec §6.6. The tree cap counts the correlation's sessions in the read model plus the cascades this
        daemon is accepting into it, so it holds exactly on one daemon; daemons of a cluster that accept into one
        tree at the same instant can each add their in-flight cascades to it (docs/decisions.md)."""
        if depth > self.max_cascade_depth:
            return "cascade_depth_exceeded"
        if depth > 0:
            size = self.store.rm.count_correlation(correlation_id) + self._cascading.get(correlation_id, 0)
            if size >= self.max_tree_sessions:
                return "cascade_limit_exceeded"
        return None

    def _uncount_cascade(self, correlation_id: str) -> None:
        left = self._cascading.pop(correlation_id, 1) - 1
        if left > 0:
            self._cascading[correlation_id] = left

    def _limit_message(self, code: str) -> str:
        if code == "cascade_depth_exceeded":
            return f"Cascade depth exceeds ATLAS_MAX_CASCADE_DEPTH ({self.max_cascade_depth})"
        return f"Correlation tree exceeds ATLAS_MAX_TREE_SESSIONS ({self.max_tree_sessions})"

    async def _end_unstarted(self, writer: SessionWriter, code: str) -> None:
        await self.finalizer.end_unstarted(writer, "failed", code, self._limit_message(code))
