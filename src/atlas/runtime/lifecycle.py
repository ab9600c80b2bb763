"""A session's life once it is accepted: started, run, finalised, cancelled — and the next parked session started
when a hold is released (spec §5.5, §6.5, §8.3).

Why one object: "release the key's hold, then start the session it promoted" follows every end (a run that
finished, a session ended before it started, one interrupted by recovery); it was written once per path and is now
written once (`release_and_start_next`). The consumer, recovery and the API call this object instead of reaching
into a daemon. It depends on the
concurrency control, the finaliser, the registry of workspaces and the engine's services, never on the consumer or
recovery (they depend on it), so the runtime has no import circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from atlas.bus.client import Bus, WrongLastSequence, cancel_subject
from atlas.bus.records import cancel_request, read_cancel_request
from atlas.bus.sessionlog import SessionLog
from atlas.runtime.accept import session_task
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.engine import CancelRequest, Engine, EngineServices, Run
from atlas.runtime.finalizer import Finalizer
from atlas.runtime.lineage import Lineage
from atlas.runtime.markers import Markers
from atlas.runtime.slots import Slots
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions import events
from atlas.sessions.events import now_iso
from atlas.sessions.reducer import is_terminal
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter

__all__ = ["SessionLifecycle", "request_cancel", "signal_policy"]

log = logging.getLogger("atlas.daemon")

CANCEL_SUBJECTS = "atlas.cancel.sessions.*"
UNSTARTED_TYPES = frozenset({"session:queued", "session:waiting"})
"""The last event of a session's log while it has not started: a parked one has `session:waiting` (issue #16)."""
STOP_INTERRUPT_WAIT_S = 5.0
"""At shutdown, how long interrupted runs get to write their terminal events after the grace period."""


class SessionLifecycle:
    def __init__(self, *, bus: Bus, session_log: SessionLog, store: SessionStore, workspaces: WorkspaceRegistry,
                 concurrency: ConcurrencyControl, finalizer: Finalizer, lineage: Lineage, markers: Markers,
                 slots: Slots, engine: EngineServices, daemon_id: str) -> None:
        self.bus = bus
        self.session_log = session_log
        self.store = store
        self.workspaces = workspaces
        self.concurrency = concurrency
        self.finalizer = finalizer
        self.lineage = lineage
        self.markers = markers
        self.slots = slots
        self.engine = engine
        self.daemon_id = daemon_id
        self.runs: dict[str, Run] = {}
        # Sessions whose `session:start` this process is writing. The write rides through a leader election (up to
        # ATLAS_BUS_RETRY) and may land long before its acknowledgement comes back, so the log can name this daemon
        # as the runner of a session that is not in `runs` yet: recovery and a redelivered envelope must not take
        # it for an orphan of this daemon and end it `interrupted` (a flake of test_nats_node_loss.py until then).
        self.starting: set[str] = set()

    def is_running(self, sid: str) -> bool:
        """Whether this process runs the session right now, or is writing its `session:start`."""
        return sid in self.runs or sid in self.starting

    # ------------------------------------------------------------ starting

    async def begin(self, ws: Workspace, job_id: str, envelope: dict[str, Any], writer: SessionWriter) -> bool:
        """Write `session:start` (this daemon as the runner). False when another writer got there first (a cancel
        while queued, a duplicate delivery): then the log is re-read and obeyed, and a hold is released if the
        session ended meanwhile.

        Raises WrongLastSequence when the start was refused although the log, read again, has not moved on (it
        still ends unstarted): that is no lost race — a writer positioned on a stale read, a refusal a cluster
        sent while electing — and answering False would make the consumer ack the envelope of a session nobody
        starts. Its republished copy is dropped as a duplicate for an hour, so the session stayed `queued`. The
        caller tries again later instead (the consumer naks the envelope)."""
        start = events.start(
            sessionId=envelope["sessionId"],
            seq=writer.next_seq,
            workspaceId=ws.id,
            jobName=job_id,
            task=session_task(envelope, job_id),
            signalId=envelope["signalId"],
            correlationId=envelope["correlationId"],
            parentSessionId=envelope.get("parentSessionId"),
            rootSessionId=envelope["rootSessionId"],
            depth=envelope["depth"],
            plannedSteps=ws.plans[job_id],
            runner=self.daemon_id,  # recovery needs it: a running session has no marker
        )
        # Counted as running from here until `launch` (a started session must be launched next) or a failed write.
        self.starting.add(start["sessionId"])
        try:
            await writer.append(start)
        except WrongLastSequence:
            self.starting.discard(start["sessionId"])
            last = await self.session_log.last(envelope["sessionId"])
            if last is None or last[0].get("type") in UNSTARTED_TYPES:
                raise
            if last[0].get("type") == "session:complete":
                policy = ws.config.signals[envelope["signalId"]].concurrency
                await self.concurrency.release(ws.id, envelope["signalId"], envelope["sessionId"], policy)
            return False
        except BaseException:
            self.starting.discard(start["sessionId"])
            raise
        return True

    def launch(self, ws: Workspace, job_id: str, envelope: dict[str, Any], writer: SessionWriter) -> None:
        """Run a started session in its own task; the slot it holds is given back at the end."""
        run = Run(envelope["sessionId"])
        self.runs[run.session_id] = run
        self.starting.discard(run.session_id)
        run.task = asyncio.create_task(self._run(ws, job_id, envelope, writer, run), name=f"run-{run.session_id}")

    async def start_parked(self, sid: str) -> None:
        """Start a session promoted from its key's queue (by a finishing holder or by recovery)."""
        marker = await self.markers.get(sid)
        if marker is None:
            return
        env = marker["envelope"]
        ws = self.workspaces.get(env["workspaceId"])
        job_id = ws.job_for_signal.get(env["signalId"]) if ws is not None else None
        writer = await SessionWriter.resume(self.session_log, self.store, sid)
        unstarted = writer.last_type in UNSTARTED_TYPES  # its log ends at session:queued or session:waiting
        if ws is None or job_id is None or not unstarted:
            if unstarted:
                await self.finalize_unstarted(writer, "failed", "workspace_unavailable",
                                              "Workspace or job no longer available", env, drop_marker=True)
            return
        await self.slots.take()
        try:
            started = await self.begin(ws, job_id, env, writer)
        except WrongLastSequence:
            self.slots.give()  # still a queued holder with its marker: recovery starts it (`_start_orphaned_parked`)
            log.warning("session %s: its start was refused although its log did not move on; recovery starts it", sid)
            return
        except BaseException:
            self.slots.give()
            raise
        if not started:
            self.slots.give()
            return
        self.launch(ws, job_id, env, writer)
        # A running session has no marker (`session:start` names its runner): this one has done its job.
        try:
            await self.markers.drop(sid)
        except Exception:  # recovery drops the marker of a started session
            log.debug("marker of %s not removed", sid, exc_info=True)

    async def _run(self, ws: Workspace, job_id: str, envelope: dict[str, Any], writer: SessionWriter,
                   run: Run) -> None:
        ended = False
        try:
            await Engine(self.engine, ws, job_id, envelope, writer, run).execute()
            ended = True
        except WrongLastSequence:
            log.warning("session %s was ended by another writer", run.session_id)
            # The summary written at finalisation must come from the log, not from a local view that has not seen
            # the other writer's session:complete yet (spec §8.1).
            try:
                await self.finalizer.rebuild_view(run.session_id)
                ended = True
            except Exception:
                log.warning("session %s: could not re-read its log", run.session_id)
        except Exception:
            # No terminal event (e.g. the bus is down): the session stays active in the read model, and recovery
            # ends it `interrupted` once the bus is back (spec §4.4) instead of leaving it active forever.
            log.exception("session %s: runner failed before its terminal event", run.session_id)
        finally:
            self.runs.pop(run.session_id, None)
            self.slots.give()
        if ended:
            await self.finalize(envelope, signal_policy(ws, envelope["signalId"]))

    # ------------------------------------------------------------ ending

    async def finalize(self, envelope: dict[str, Any], policy: str, drop_marker: bool = False) -> None:
        """After `session:complete`: summary to KV, hold released, next parked session started (and the marker
        removed, for a session that has one: `drop_marker`)."""
        sid = envelope["sessionId"]
        try:
            try:
                await self.finalizer.write_final(sid, drop_marker)
            except Exception:
                self.finalizer.retry_later(sid, drop_marker)
                raise
            await self.release_and_start_next(envelope["workspaceId"], envelope["signalId"], sid, policy)
        except Exception:
            log.exception("finalising %s failed; recovery will retry", sid)

    async def finalize_unstarted(self, writer: SessionWriter, status: str, code: str, message: str,
                                 envelope: dict[str, Any] | None = None, drop_marker: bool = False,
                                 duplicate_of: str | None = None) -> bool:
        """End a session that never started (policy skip, limits, cancel while queued); with its `envelope`, its
        hold is released too. False if it lost a race. `duplicate_of`: see `Finalizer.end_unstarted`."""
        if not await self.finalizer.end_unstarted(writer, status, code, message, drop_marker, duplicate_of):
            return False
        if envelope is not None:
            ws = self.workspaces.get(envelope["workspaceId"])
            if ws is not None and envelope["signalId"] in ws.config.signals:
                await self.release_and_start_next(envelope["workspaceId"], envelope["signalId"], writer.session_id,
                                                  signal_policy(ws, envelope["signalId"]))
        return True

    async def release_and_start_next(self, workspace_id: str, signal_id: str, sid: str, policy: str) -> None:
        """Drop `sid`'s hold on its key (an empty `sid`: only the dead holders), then start the parked session the
        release promoted, if any."""
        nxt = await self.concurrency.release(workspace_id, signal_id, sid, policy)
        if nxt is not None:
            await self.start_parked(nxt)

    def policy_of(self, envelope: dict[str, Any]) -> str:
        """The concurrency policy of an envelope's signal as loaded now ("concurrent" when it is gone)."""
        return signal_policy(self.workspaces.get(envelope.get("workspaceId", "")), envelope.get("signalId", ""))

    # ------------------------------------------------------------ cancellation

    async def cancel(self, sid: str, status: str, code: str, message: str) -> None:
        """Cancel one session wherever it is: queued ones are ended here, active ones by their runner."""
        view = self.store.view(sid)
        if view is None or is_terminal(view["status"]):
            return
        run = self.runs.get(sid)
        if run is not None and run.task is not None:
            request_cancel(run, CancelRequest(status, code, message))
            return
        if view["status"] == "queued":
            writer = await SessionWriter.resume(self.session_log, self.store, sid)
            marker = await self.markers.get(sid)
            envelope = marker["envelope"] if marker is not None else None
            if await self.finalize_unstarted(writer, status, code, message, envelope, drop_marker=marker is not None):
                return
        await self.bus.nc.publish(cancel_subject(sid), cancel_request(status, code, message, now_iso()))  # type: ignore[union-attr]

    async def cancel_tree(self, sid: str, code: str, message: str) -> list[str]:
        """Cancel a session and every non-terminal descendant (`parent_cancelled`, spec §8.3)."""
        descendants = self.lineage.live_descendants(sid)
        await self.cancel(sid, "cancelled", code, message)
        for child in descendants:
            await self.cancel(child, "cancelled", "parent_cancelled", f"Ancestor {sid} was cancelled")
        return descendants

    async def cancel_and_wait(self, sids: list[str], code: str, message: str, timeout: float) -> None:
        for sid in sids:
            await self.cancel(sid, "cancelled", code, message)
        waits = [self.store.wait_terminal(sid) for sid in sids]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)

    async def listen_for_cancels(self) -> None:
        """Act on cancels broadcast by other daemons for the sessions this one runs."""
        await self.bus.nc.subscribe(CANCEL_SUBJECTS, cb=self._on_cancel_msg)  # type: ignore[union-attr]

    async def _on_cancel_msg(self, msg: Any) -> None:
        sid = msg.subject.rsplit(".", 1)[-1]
        run = self.runs.get(sid)
        if run is None or run.task is None:
            return
        request_cancel(run, CancelRequest(*read_cancel_request(msg.data)))

    async def drain(self, grace_s: float) -> None:
        """At shutdown (spec §8.4): let the runs finish for `grace_s`, then interrupt the rest."""
        pending = [r.task for r in self.runs.values() if r.task is not None]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=grace_s)
        for run in list(self.runs.values()):
            if run.task is not None and not run.task.done():
                request_cancel(run, CancelRequest("interrupted", "daemon_shutdown", "Daemon shut down"))
        if still:
            await asyncio.wait(still, timeout=STOP_INTERRUPT_WAIT_S)


def request_cancel(run: Run, request: CancelRequest) -> None:
    """Cancel a run once: the first request's reason wins and later ones change nothing.

    Cancelling the task again would interrupt the runner while it records the first cancel (its shielded
    `step:complete`, then `session:complete`), and the session would lose its terminal event."""
    if run.cancel is not None or run.task is None:
        return
    run.cancel = request
    run.cancelled_flag.set()
    run.task.cancel()


def signal_policy(ws: Workspace | None, signal_id: str) -> str:
    """The concurrency policy of a signal ("concurrent" for a signal or workspace that is gone)."""
    sig = ws.config.signals.get(signal_id) if ws is not None else None
    return sig.concurrency if sig is not None else "concurrent"

